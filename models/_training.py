"""Training code shared by the built-in models' scripts (``models/<name>/train.py``).

Each ``train.py`` keeps what is specific to its model (label rule, architecture, constants,
slide lists, augmentation recipe, README text) and composes the steps here: reading and
labelling slides, crop sampling, the training loop, held-out evaluation, ONNX + TorchScript
export and the model card.  The scripts are run as ``python models/<name>/train.py``, so they
put ``models/`` on ``sys.path`` to import this module.

Everything here is deterministic for a given seed, torch version and thread count: keep the
order of random draws unchanged, or retraining will no longer reproduce the committed weights.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import onnxruntime as ort
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

from wsi_infer.readers import open_slide
from wsi_infer.rect import Rect
from wsi_infer.resolution import plan_level, read_target

#: Input normalisation of the built-in models, done outside the model:
#: x = (pixel * SCALE - MEAN) / STD.
SCALE = 1.0 / 255.0
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Tile side used when predicting whole held-out regions.
EVAL_TILE = 512
#: Largest allowed difference between ONNX Runtime and TorchScript logits.
EXPORT_TOLERANCE = 1e-4

#: Background of a synthetic slide, as :func:`wsi_infer.synthetic.make_slide` takes it.
Background = Literal["glass", "black"]
#: ``augment(image, label, rng) -> (image, label)`` for one crop.
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- data


@dataclass
class LabelledSlide:
    """A slide read whole at the model's resolution with its labels."""

    name: str
    source: str  # "real" or "synthetic"
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    train_rows: int  # rows [0, train_rows) may be trained on; the rest is held out

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


SlideT = TypeVar("SlideT", bound=LabelledSlide)
#: ``load(path, source, holdout_fraction)``: a labelled slide, or ``None`` to skip it.
SlideLoader = Callable[[Path, str, float], SlideT | None]


def expand_slide_paths(patterns: Sequence[str]) -> list[Path]:
    """Paths from a list of paths and globs, in the order given; a clear error for no match."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise SystemExit(f"train.py: no slide matches {pattern!r}")
        paths.extend(Path(m) for m in matches)
    return paths


def read_at_mpp(path: Path, mpp: float, chunk: int = 2048) -> tuple[np.ndarray, float]:
    """The whole slide at ``mpp`` µm/px as ``uint8`` RGB, read in chunks with wsi-infer's
    reader, and the mpp actually obtained (a level within 2 % of ``mpp`` is used as is)."""
    with open_slide(path) as slide:
        if slide.mpp is None:
            raise SystemExit(f"train.py: {path} has no mpp in its metadata")
        plan = plan_level(slide, slide.mpp, mpp)
        out = np.empty((plan.height, plan.width, 3), np.uint8)
        for y0 in range(0, plan.height, chunk):
            for x0 in range(0, plan.width, chunk):
                y1, x1 = min(y0 + chunk, plan.height), min(x0 + chunk, plan.width)
                region = read_target(slide, plan, Rect(x0, y0, x1, y1))
                out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255)
    return out, math.sqrt(plan.mpp_x * plan.mpp_y)


def make_synthetic_slides(
    folder: Path, seed: int, specs: Sequence[tuple[float, Background]], size: tuple[int, int],
) -> list[Path]:
    """Render one synthetic slide per ``(level-0 mpp, background)`` of ``specs`` into
    ``folder``; ``size`` is ``(width, height)`` in level-0 pixels, slide ``i`` has seed
    ``1000 * seed + i``."""
    from wsi_infer.synthetic import make_slide

    paths = []
    width, height = size
    for i, (mpp, background) in enumerate(specs):
        path = folder / f"synthetic-{i}-{background}-{mpp}mpp.svs"
        make_slide(path, width=width, height=height, mpp=mpp, kind="svs", seed=seed * 1000 + i,
                   background=background)
        paths.append(path)
    return paths


def load_dataset(
    real: Sequence[Path], synthetic: Sequence[Path], holdout_fraction: float,
    load: SlideLoader[SlideT],
) -> list[SlideT]:
    """Label every slide with ``load``; the last synthetic slide is wholly held out."""
    slides = []
    for i, path in enumerate([*real, *synthetic]):
        is_synthetic = i >= len(real)
        held_out = is_synthetic and path == synthetic[-1]
        slide = load(path, "synthetic" if is_synthetic else "real",
                     1.0 if held_out else holdout_fraction)
        if slide is not None:
            slides.append(slide)
    return slides


def load_training_slides(
    real: Sequence[Path], load: SlideLoader[SlideT], *, name: str, mpp: float, seed: int,
    synthetic_specs: Sequence[tuple[float, Background]], synthetic_size: tuple[int, int],
    holdout_fraction: float, with_synthetic: bool = True,
) -> list[SlideT]:
    """The real slides plus (unless ``with_synthetic`` is false) synthetic ones rendered into
    a temporary folder, all read and labelled with ``load``."""
    with tempfile.TemporaryDirectory(prefix=f"wsi-infer-{name}-") as tmp:
        synthetic: list[Path] = []
        if with_synthetic:
            print(f"rendering {len(synthetic_specs)} synthetic slides ...")
            synthetic = make_synthetic_slides(Path(tmp), seed, synthetic_specs, synthetic_size)
        print(f"reading and labelling slides at {mpp:g} µm/px ...")
        return load_dataset(real, synthetic, holdout_fraction, load)


# --------------------------------------------------------------------------- augmentation


def rotate_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90 and horizontal flip; returns a float32 image and a writable label."""
    k = int(rng.integers(4))
    image, label = np.rot90(image, k), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image.astype(np.float32), label.copy()


def jitter_colour(
    image: np.ndarray, rng: np.random.Generator, *, brightness: tuple[float, float],
    contrast: tuple[float, float],
) -> np.ndarray:
    """Stain and scanner variation: a brightness gain drawn from ``brightness`` times
    per-channel gains within 2 %, and a contrast factor drawn from ``contrast``."""
    gains = rng.uniform(*brightness) * rng.uniform(0.98, 1.02, size=3)
    factor = rng.uniform(*contrast)
    mean = image.mean(axis=(0, 1), keepdims=True)
    return ((image - mean) * factor + mean) * gains


def sensor_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` plus Gaussian noise of a random sigma up to 3."""
    return image + rng.normal(0, rng.uniform(0, 3), image.shape)


def add_padding(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a black rectangle (scanner padding) in place; usually a band from one edge."""
    h, w = label.shape
    if rng.random() < 0.7:  # a band along one edge, as scanners pad the unscanned area
        depth = int(rng.integers(8, h // 2))
        side = int(rng.integers(4))
        y0, y1, x0, x1 = [(0, depth, 0, w), (h - depth, h, 0, w),
                          (0, h, 0, depth), (0, h, w - depth, w)][side]
    else:
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        y1, x1 = int(rng.integers(y0 + 8, h + 1)), int(rng.integers(x0 + 8, w + 1))
    image[y0:y1, x0:x1] = rng.uniform(0, 20) + rng.normal(0, 1.5, (y1 - y0, x1 - x0, 3))
    label[y0:y1, x0:x1] = False


# --------------------------------------------------------------------------- sampling


def label_edges(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` of the labelled pixels on the outline of ``mask``, as an (n, 2) array."""
    return np.argwhere(mask & ~ndi.binary_erosion(mask, border_value=1))


@dataclass
class CropSampler:
    """Random labelled training crops from the training rows of the slides.

    A slide is drawn with probability proportional to the square root of its training area
    (big slides count more, small ones are not drowned), times ``real_weight`` for real
    slides; then, with probability ``edge_p``, a ``size`` x ``size`` crop that contains a
    random point of the label outline, else a uniformly random crop; ``augment`` is applied
    to every crop.
    """

    slides: Sequence[LabelledSlide]
    rng: np.random.Generator
    augment: Augment
    size: int
    edge_p: float
    real_weight: float = 1.0
    trainable: list[LabelledSlide] = field(init=False)
    weights: np.ndarray = field(init=False)
    edges: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.trainable = [s for s in self.slides
                          if s.train_rows >= self.size and s.shape[1] >= self.size]
        if not self.trainable:
            raise SystemExit(f"train.py: no slide has a {self.size}x{self.size} training region")
        areas = np.array([s.train_rows * s.shape[1] for s in self.trainable], np.float64)
        # With real_weight 1 the boost is all ones and changes no bit of the weights.
        boost = np.array([self.real_weight if s.source == "real" else 1.0 for s in self.trainable])
        self.weights = np.sqrt(areas) * boost / (np.sqrt(areas) * boost).sum()
        self.edges = [label_edges(s.mask[:s.train_rows]) for s in self.trainable]

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        """One augmented crop and its label."""
        index = int(self.rng.choice(len(self.trainable), p=self.weights))
        slide, edges = self.trainable[index], self.edges[index]
        y_max, x_max = slide.train_rows - self.size, slide.shape[1] - self.size
        if len(edges) and self.rng.random() < self.edge_p:
            ey, ex = edges[int(self.rng.integers(len(edges)))]
            y = int(np.clip(ey - self.rng.integers(self.size), 0, y_max))
            x = int(np.clip(ex - self.rng.integers(self.size), 0, x_max))
        else:
            y, x = int(self.rng.integers(0, y_max + 1)), int(self.rng.integers(0, x_max + 1))
        window = np.s_[y:y + self.size, x:x + self.size]
        return self.augment(slide.rgb[window], slide.mask[window], self.rng)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` crops as a normalised NCHW input and an N1HW float target."""
        crops = [self.crop() for _ in range(n)]
        images = np.stack([c[0] for c in crops])
        labels = np.stack([c[1] for c in crops])[:, None]
        return normalise(images), torch.from_numpy(labels.astype(np.float32))


def normalise(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) pixels in 0..255 to the model's normalised NCHW float32 input."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * SCALE - mean) / std).contiguous()


# --------------------------------------------------------------------------- training


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    """Make the run repeatable: seeded torch, deterministic kernels, a fixed thread count."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


def warmup_cosine(total: int, warmup_fraction: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to zero at step ``total``."""
    warmup = max(1, round(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train(
    model: nn.Module, sampler: CropSampler, *, epochs: int, steps_per_epoch: int,
    batch_size: int, lr: float,
) -> list[float]:
    """Adam with linear warm-up and cosine decay of the learning rate; returns the mean loss
    of every epoch."""
    model.train()
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(total))
    history = []
    for epoch in range(epochs):
        start, losses = time.perf_counter(), []
        for _ in range(steps_per_epoch):
            x, y = sampler.batch(batch_size)
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
        print(f"  epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluation


def tiles(length: int, tile: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` intervals covering ``range(length)``."""
    for start in range(0, length, tile):
        yield start, min(start + tile, length)


@torch.no_grad()
def predict_logits(
    model: nn.Module, rgb: np.ndarray, margin: int, tile: int = EVAL_TILE,
) -> np.ndarray:
    """Logits for a whole image, tile by tile with ``margin`` pixels of context (the model's
    receptive margin): the same result as one pass over the whole image, in bounded memory."""
    h, w = rgb.shape[:2]
    m = margin
    out = np.empty((h, w), np.float32)
    for y0, y1 in tiles(h, tile):
        for x0, x1 in tiles(w, tile):
            cy0, cx0 = max(0, y0 - m), max(0, x0 - m)
            cy1, cx1 = min(h, y1 + m), min(w, x1 + m)
            logits = model(normalise(rgb[None, cy0:cy1, cx0:cx1]))[0, 0].numpy()
            out[y0:y1, x0:x1] = logits[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    return out


@dataclass(frozen=True)
class Score:
    """Overlap between a predicted and a reference mask."""

    intersection: int
    predicted: int
    reference: int

    @property
    def dice(self) -> float:
        total = self.predicted + self.reference
        return 2 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        union = self.predicted + self.reference - self.intersection
        return self.intersection / union if union else 1.0

    def __add__(self, other: Score) -> Score:
        return Score(self.intersection + other.intersection,
                     self.predicted + other.predicted, self.reference + other.reference)

    @classmethod
    def of(cls, predicted: np.ndarray, reference: np.ndarray) -> Score:
        return cls(int((predicted & reference).sum()), int(predicted.sum()), int(reference.sum()))


def evaluate(
    model: nn.Module, slides: Sequence[LabelledSlide], *, margin: int, class_name: str,
) -> dict[str, Any]:
    """Dice and IoU of the thresholded model (logit > 0) on every slide's held-out rows.

    The first held-out rows get the ``margin`` rows above them as context, as they would in a
    whole-slide run; only held-out pixels are scored.  Each slide also reports the fraction of
    its held-out pixels labelled ``class_name`` (key ``<class_name>_fraction``).
    """
    per_slide: dict[str, dict[str, Any]] = {}
    overall = Score(0, 0, 0)
    for slide in slides:
        top = max(0, slide.train_rows - margin)
        logits = predict_logits(model, slide.rgb[top:], margin)[slide.train_rows - top:]
        reference = slide.mask[slide.train_rows:]
        score = Score.of(logits > 0, reference)
        overall += score
        per_slide[slide.name] = {
            "dice": round(score.dice, 4), "iou": round(score.iou, 4),
            "pixels": int(reference.size),
            f"{class_name}_fraction": round(float(reference.mean()), 4),
            "held_out": "whole slide" if slide.train_rows == 0 else
            f"bottom {slide.shape[0] - slide.train_rows} of {slide.shape[0]} rows",
        }
    return {"overall": {"dice": round(overall.dice, 4), "iou": round(overall.iou, 4)},
            "per_slide": per_slide}


# --------------------------------------------------------------------------- export


def export_onnx(model: nn.Module, path: Path) -> None:
    """ONNX opset 17 with dynamic N, H, W; input ``input``, output ``logits`` (no sigmoid)."""
    dummy = torch.zeros(1, 3, 64, 64)
    axes = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(
        model, (dummy,), str(path), opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": axes, "logits": axes}, dynamo=False,
    )


def export_scripted(model: nn.Module, path: Path) -> None:
    """A scripted module saved with ``torch.jit.save`` (loadable without this file).

    A scripted ``nn.Conv2d`` lists its constants in set order, which depends on Python's hash
    seed, so the file (and its sha256) may change from run to run: see :func:`export_traced`.
    """
    torch.jit.save(torch.jit.script(model), str(path))


def export_traced(model: nn.Module, path: Path) -> None:
    """A traced module saved with ``torch.jit.save`` (loadable without this file).

    Traced rather than scripted: a scripted ``nn.Conv2d`` lists its constants in set order,
    which depends on Python's hash seed, so the scripted file (and its sha256) would change
    from run to run; the traced file is byte-for-byte reproducible (for the same scripts, torch
    and install paths: TorchScript stores debug stack traces, i.e. the file names and line
    numbers of the Python calls that led to the trace).  The network has no shape-dependent
    control flow, so the trace is valid for any N, H, W (checked by :func:`verify_exports`).
    Deterministic algorithms are switched off while tracing, else the flag would be baked
    into every traced convolution.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.zeros(1, 3, 64, 64))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    torch.jit.save(traced, str(path))


def verify_exports(onnx_path: Path, torchscript_path: Path, seed: int) -> float:
    """Check that both files load, agree on an odd-sized input and accept any H, W.

    Returns the largest difference between ONNX Runtime and TorchScript logits.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(torchscript_path))
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in [(1, 3, 300, 257), (2, 3, 31, 1000), (1, 3, 1, 1), (3, 3, 129, 64)]:
        x = normalise(rng.uniform(0, 255, (shape[0], shape[2], shape[3], 3)))
        (onnx_out,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            ts_out = scripted(x).numpy()
        if onnx_out.shape != (shape[0], 1, shape[2], shape[3]) or ts_out.shape != onnx_out.shape:
            raise RuntimeError(f"export check: input {shape} gave {onnx_out.shape}, {ts_out.shape}")
        worst = max(worst, float(np.abs(onnx_out - ts_out).max()))
    if worst >= EXPORT_TOLERANCE:
        raise RuntimeError(f"export check: ONNX and TorchScript differ by {worst:.2e}")
    return worst


def export_and_verify(
    model: nn.Module, out: Path, name: str, export_torchscript: Callable[[nn.Module, Path], None],
    seed: int,
) -> tuple[Path, Path, float]:
    """Write ``<name>.onnx`` and ``<name>.pt`` (with ``export_torchscript``) into ``out`` and
    check them; returns both paths and the largest ONNX vs TorchScript difference."""
    onnx_path, torchscript_path = out / f"{name}.onnx", out / f"{name}.pt"
    export_onnx(model, onnx_path)
    export_torchscript(model, torchscript_path)
    max_diff = verify_exports(onnx_path, torchscript_path, seed)
    print(f"exports agree (max |ONNX - TorchScript| = {max_diff:.1e})")
    return onnx_path, torchscript_path, max_diff


def sha256(path: Path) -> str:
    """The hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- card and README


def model_card(
    onnx_path: Path, torchscript_path: Path, *, name: str, version: str, description: str,
    mpp: float, receptive_margin: int, color: str,
) -> dict[str, Any]:
    """The model card of a one-class built-in model (class ``name``, drawn in ``color``), in
    the format of ``wsi_infer/schemas/model-card.schema.json``."""
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": "segmentation",
        "description": description,
        "weights": [
            {"format": "onnx", "file": onnx_path.name, "sha256": sha256(onnx_path)},
            {"format": "torchscript", "file": torchscript_path.name,
             "sha256": sha256(torchscript_path)},
        ],
        "input": {"layout": "NCHW", "channel_order": "RGB", "size": None, "size_multiple": 1,
                  "tile_size": 512, "scale": SCALE, "mean": list(MEAN), "std": list(STD)},
        "mpp": mpp,
        "receptive_margin": receptive_margin,
        "output": {"classes": [{"name": name, "color": color}],
                   "activation": "sigmoid", "stride": 1},
        "license": "Apache-2.0",
        "citation": f"wsi-infer built-in {name} model v{version}, trained with "
                    f"models/{name}/train.py",
    }


def weights_table(card: dict[str, Any]) -> str:
    """The rows (file, format, sha256) of the README's weights table."""
    return "\n".join(f"| `{w['file']}` | {w['format']} | `{w['sha256']}` |"
                     for w in card["weights"])


def slide_list(report: dict[str, Any]) -> str:
    """The real training slides as an indented Markdown list."""
    return "\n".join(f"  - `{s}`" for s in report["slides"])


def machine_description(threads: int) -> str:
    """CPU cores, architecture and torch threads, for the README and ``metrics.json``."""
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {threads} threads"


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Write ``card.json`` into ``out``."""
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def write_report(
    out: Path, report: dict[str, Any], readme: str, onnx_path: Path, torchscript_path: Path,
) -> None:
    """Write ``metrics.json`` and ``README.md`` into ``out`` and say what was written."""
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(readme)
    print(f"wrote {onnx_path}, {torchscript_path}, card.json, metrics.json and README.md "
          f"in {out} ({report['total_seconds']:.0f} s)")


# --------------------------------------------------------------------------- command line


def build_parser(
    description: str, *, default_slides: Sequence[str], default_out: Path, steps_per_epoch: int,
) -> argparse.ArgumentParser:
    """The command line shared by the training scripts, with the model's defaults."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--slides", nargs="+", default=list(default_slides),
                        help="real slides (paths or globs) to train on, besides synthetic ones")
    parser.add_argument("--out", type=Path, default=default_out,
                        help="folder for the weights, card and README")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=steps_per_epoch)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="train on the real slides only")
    return parser


def retrain_command(args: argparse.Namespace, defaults: argparse.Namespace, name: str) -> str:
    """The command line that reproduces this run of ``models/<name>/train.py``; options equal
    to ``defaults`` (the script's parsed empty command line) are left out."""
    parts = [f"python models/{name}/train.py", f"--out models/{name}",
             f"--epochs {args.epochs}", f"--seed {args.seed}"]
    if list(args.slides) != list(defaults.slides):
        parts.insert(1, "--slides " + " ".join(args.slides))
    for option in ("steps_per_epoch", "batch_size", "lr", "threads"):
        if getattr(args, option) != getattr(defaults, option):
            parts.append(f"--{option.replace('_', '-')} {getattr(args, option)}")
    if args.no_synthetic:
        parts.append("--no-synthetic")
    return " ".join(parts)
