"""Shared pieces of the peer runners: the model card, its preprocessing, result files.

Imported by the runners that execute in the peers' virtual environment (torch, no wsi_infer),
so it depends only on the standard library, numpy and (lazily) torch.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "nuclei"
THREADS = 2  # a 2-core machine: torch intra-op threads and data-loader workers
BATCH = int(os.environ.get("WSI_INFER_PEERS_BATCH", "8"))  # bench_peers.py --batch-size


@dataclass(frozen=True)
class Card:
    """The parts of ``models/nuclei/card.json`` a peer needs."""

    torchscript: Path
    mpp: float
    tile: int  # output pixels a tile owns (card input.tile_size)
    margin: int  # receptive margin: context read on each side
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    activation: str

    @property
    def window(self) -> int:
        """Input size of one tile: the tile plus its margin on each side (544)."""
        return self.tile + 2 * self.margin


def load_card(model_dir: Path = MODEL_DIR) -> Card:
    """Read the card; only the TorchScript weights are used by the peers."""
    card = json.loads((model_dir / "card.json").read_text())
    weights = {w["format"]: w["file"] for w in card["weights"]}
    spec = card["input"]
    assert spec["layout"] == "NCHW" and spec["channel_order"] == "RGB"
    return Card(torchscript=model_dir / weights["torchscript"], mpp=float(card["mpp"]),
                tile=int(spec["tile_size"]), margin=int(card["receptive_margin"]),
                scale=float(spec["scale"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                activation=card["output"]["activation"])


def setup_torch(threads: int = THREADS) -> None:
    """CPU torch with ``threads`` intra-op threads and one inter-op thread."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (a library initialised the pool first)


def shim_torchvision() -> None:
    """Let ``import torchvision`` work with the CPU torch wheel.

    The only torchvision 0.28.0 wheel the package index offers for Linux is the CUDA build:
    its ``_C.so`` links ``libc10_cuda.so``, which the CPU torch wheel lacks, so the extension
    does not load and ``torchvision/_meta_registrations.py`` then fails on import
    ("operator torchvision::nms does not exist").  The peers only use torchvision's pure-Python
    parts (transforms, model definitions), never its C++ ops, so the meta registrations are
    skipped.  Must run before anything imports torchvision.
    """
    name = "torchvision._meta_registrations"
    if name not in sys.modules:
        sys.modules[name] = types.ModuleType(name)


def load_model(card: Card):  # type: ignore[no-untyped-def]
    """The TorchScript module (``torch.jit.load``: no pickles), in eval mode, on the CPU."""
    import torch

    model = torch.jit.load(str(card.torchscript), map_location="cpu")
    model.eval()
    return model


def normalise_nchw(batch_uint8_nhwc, card: Card):  # type: ignore[no-untyped-def]
    """The card's preprocessing: RGB, ``(pixel * scale - mean) / std``, NHWC → NCHW float32."""
    import torch

    x = torch.as_tensor(batch_uint8_nhwc)
    x = x[..., :3].permute(0, 3, 1, 2).to(torch.float32)
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x * card.scale - mean) / std).contiguous()


def save_probability_map(out: Path, prob_u8: np.ndarray, covered: np.ndarray, mpp_x: float,
                         mpp_y: float, **extra: Any) -> None:
    """Write a peer's map for comparison: ``out.npy`` (uint8 p×255, rows × cols),
    ``out.cov.npy`` (bool, pixels the tool computed) and ``out.json`` (its grid: output pixel
    ``(i, j)`` covers ``[j·mpp_x, (j+1)·mpp_x) × [i·mpp_y, (i+1)·mpp_y)`` µm of the slide)."""
    np.save(out.with_suffix(".npy"), prob_u8)
    np.save(out.with_suffix(".cov.npy"), covered)
    out.with_suffix(".json").write_text(json.dumps({"mpp_x": mpp_x, "mpp_y": mpp_y, **extra}))


class Stopwatch:
    """Wall and CPU seconds (this process and its reaped children) since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = self._cpu()

    @staticmethod
    def _cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def result(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self.t0, "cpu": self._cpu() - self.c0}


def emit(result: dict[str, Any]) -> None:
    """Print the runner's result as the last line of stdout (the bench reads it)."""
    result["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.flush()
    print(json.dumps(result), flush=True)

