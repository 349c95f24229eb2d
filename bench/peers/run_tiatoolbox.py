"""TIAToolbox 2.x: ``SemanticSegmentor`` with the nuclei TorchScript wrapped as a ``ModelABC``.

    python bench/peers/run_tiatoolbox.py SLIDE OUT_DIR          # prints a JSON line last

Reads 544-px patches at 0.5 µm/px (``IOSegmentorConfig``: input 544, output 512 = the centre
crop that the 16-px receptive margin leaves exact, stride 512), with TIAToolbox's own Otsu
tissue mask (``auto_get_mask``, the default), batch 8, 2 loader workers, 2 torch threads,
and saves its probability map in its own format (``output_type="zarr"``).  ``--export``
converts that zarr into the bench's comparison files (not part of the timed run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.shim_torchvision()

import numpy as np
import torch
from tiatoolbox.models.engine.io_config import IOSegmentorConfig
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
from tiatoolbox.models.models_abc import ModelABC

CARD = common.load_card()


class NucleiFCN(ModelABC):
    """The TorchScript nuclei FCN as a TIAToolbox model (sigmoid probabilities, centre crop)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = common.load_model(CARD)
        self.class_dict = {0: "nuclei"}

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(imgs)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
        """uint8 NHWC patches → sigmoid(logits) of the central ``tile`` px, NHWC float32."""
        x = common.normalise_nchw(batch_data, CARD).to(device)
        with torch.inference_mode():
            p = torch.sigmoid(model(x))
        m = CARD.margin
        return p[:, :, m:p.shape[2] - m, m:p.shape[3] - m].permute(0, 2, 3, 1).cpu().numpy()


def run(slide: Path, out_dir: Path) -> dict:
    """Segment ``slide`` into ``out_dir/tiatoolbox/`` and return what the bench reports."""
    common.setup_torch()
    save_dir = out_dir / "tiatoolbox"
    shutil.rmtree(save_dir, ignore_errors=True)
    resolution = [{"units": "mpp", "resolution": CARD.mpp}]
    ioconfig = IOSegmentorConfig(
        input_resolutions=resolution, output_resolutions=resolution,
        patch_input_shape=(CARD.window, CARD.window), patch_output_shape=(CARD.tile, CARD.tile),
        stride_shape=(CARD.tile, CARD.tile), save_resolution=resolution[0],
    )
    segmentor = SemanticSegmentor(model=NucleiFCN(), batch_size=common.BATCH,
                                  num_workers=common.THREADS, device="cpu", verbose=False)
    watch = common.Stopwatch()
    output = segmentor.run([slide], patch_mode=False, ioconfig=ioconfig, save_dir=save_dir,
                           overwrite=True, output_type="zarr", return_probabilities=True,
                           auto_get_mask=True)
    timed = watch.result()
    tiles = len(segmentor.output_locations) if segmentor.output_locations is not None else -1
    zarr_path = output[slide] if isinstance(output, dict) else output
    return {"tool": "tiatoolbox", "tiles": tiles, "inner_seconds": timed["seconds"],
            "inner_cpu": timed["cpu"], "output": str(zarr_path)}


def export(result: dict, out: Path) -> None:
    """TIAToolbox's zarr → the bench's comparison files, on its 0.5 µm/px grid.

    Pixels never computed (outside its tissue mask) are 0 in its canvas; a probability of
    exactly 0 never occurs with a sigmoid, so ``covered = p > 0`` (before uint8 rounding).
    """
    import zarr

    group = zarr.open(result["output"], mode="r")
    probs = np.asarray(group["probabilities"])  # (H, W, C) at the save resolution
    p = probs[..., 0] if probs.ndim == 3 else probs
    mpp = CARD.mpp  # patches are read at exactly 0.5 µm/px from level-0 origin (0, 0)
    common.save_probability_map(out, np.rint(p * 255).astype(np.uint8), p > 0, mpp, mpp,
                                shape=list(probs.shape), keys=list(group.keys()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--export", type=Path, default=None,
                        help="instead of running: convert the saved result (JSON file) for comparison")
    args = parser.parse_args()
    if args.export:
        result = json.loads(args.export.read_text())
        export(result, args.out_dir / "tiatoolbox-map")
        return 0
    common.emit(run(args.slide.resolve(), args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
