"""Train wsi-infer's built-in ``nuclei`` model and write its weights, model card and README.

The model segments hematoxylin-rich nuclei at 0.5 µm/px.  Its labels are derived by this
script with a fixed rule (see :func:`nuclei_labels`): colour deconvolution
(:func:`skimage.color.rgb2hed`), an Otsu threshold on the hematoxylin channel computed within
the tissue of each slide (:func:`wsi_infer.tissue.tissue_from_rgb`), a colour test that drops
green/blue marking ink and black padding, then a small opening, filling of nucleus-sized holes
and removal of specks smaller than 12 µm².  The network learns a fast, tile-local version of
that rule.

Data: the real brightfield slides given with ``--slides`` (by default CMU-1-Small-Region,
0.499 µm/px) plus synthetic H&E slides rendered at run time with
:func:`wsi_infer.synthetic.make_slide`, all read at 0.5 µm/px with wsi-infer's readers.  The
bottom :data:`HOLDOUT_FRACTION` of every slide and the whole last synthetic slide are held
out: no training crop touches them.

Retrain (about 5 minutes on a 2-core CPU)::

    python models/nuclei/train.py --out models/nuclei

Outputs in ``--out``: ``nuclei.onnx``, ``nuclei.pt`` (TorchScript), ``card.json`` and
``README.md``, plus ``metrics.json`` with the held-out scores.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from torch import nn
from torch.nn import functional as F

from wsi_infer.readers import open_slide
from wsi_infer.resolution import plan_level, read_target
from wsi_infer.tissue import tissue_from_rgb

NAME = "nuclei"
VERSION = "1.0.0"
#: Resolution the model works at (µm/px).
MPP = 0.5
#: Input normalisation, done outside the model: x = (pixel * SCALE - MEAN) / STD.
SCALE = 1.0 / 255.0
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Receptive field radius of the network in pixels: 1 + 2 + 4 + 8 + 1.
RECEPTIVE_MARGIN = 16
#: Side of the square training crops (pixels at 0.5 µm/px).
CROP = 96
#: Fraction of each slide's rows, at the bottom, that is never trained on.
HOLDOUT_FRACTION = 0.2
#: Tile side used when predicting whole held-out regions.
EVAL_TILE = 512
#: Largest allowed difference between ONNX Runtime and TorchScript logits.
EXPORT_TOLERANCE = 1e-4
#: Real slides are drawn this many times more often than their area alone would say.
REAL_WEIGHT = 3.0

# Label rule (see nuclei_labels).
#: The Otsu threshold is computed on hematoxylin values clipped at this percentile of the
#: tissue pixels, so that a few extreme pixels (ink, dust) cannot drag it up.
H_CLIP_PERCENTILE = 99.5
#: Pixels whose 3x3 mean is darker than this in every channel are scanner padding or dust,
#: never nuclei (the darkest nuclei of CMU-1 have single pixels below 30 in every channel, but
#: not their 3x3 means).
PADDING_MAX = 25
#: Objects smaller than this (µm²) are noise, not nuclei.
MIN_NUCLEUS_UM2 = 12.0
#: The hematoxylin channel is smoothed with a Gaussian of this sigma (pixels) before
#: thresholding: it removes JPEG and chromatin speckle, so that outlines are smooth and pale
#: nuclei are not cut into fragments.
H_SIGMA = 1.0
#: Holes smaller than this (µm²) inside a nucleus are filled.
MAX_HOLE_UM2 = 50.0

DATA_DIR = Path("/work/shared/data/slides")
DEFAULT_SLIDES = (str(DATA_DIR / "CMU-1-Small-Region.svs"),)
#: (level-0 mpp, background) of each synthetic slide; the last one is held out entirely.
SYNTHETIC_SPECS: tuple[tuple[float, Literal["glass", "black"]], ...] = (
    (0.5, "glass"),
    (0.25, "black"),
    (0.5, "black"),
    (0.25, "glass"),
)
SYNTHETIC_SIZE = (4000, 3000)  # (width, height) in level-0 pixels

CARD_DESCRIPTION = (
    "Hematoxylin-rich nuclei in H&E at 0.5 µm/px (semantic mask, one logit per pixel)."
)


# --------------------------------------------------------------------------- data


@dataclass
class LabelledSlide:
    """A slide read whole at 0.5 µm/px with its nuclei labels."""

    name: str
    source: str  # "real" or "synthetic"
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    train_rows: int  # rows [0, train_rows) may be trained on; the rest is held out
    threshold: float  # the slide's hematoxylin threshold

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


def expand_slide_paths(patterns: Sequence[str]) -> list[Path]:
    """Paths from a list of paths and globs, in the order given; a clear error for no match."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(m).exists() for m in matches):
            raise SystemExit(f"train.py: no slide matches {pattern!r}")
        paths.extend(Path(m) for m in matches)
    return paths


def read_at_mpp(path: Path, mpp: float = MPP, chunk: int = 2048) -> tuple[np.ndarray, float]:
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
                region = read_target(slide, plan, x0, y0, x1, y1)
                out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255)
    return out, math.sqrt(plan.mpp_x * plan.mpp_y)


def remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_pixels`` pixels."""
    labels, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    keep = np.bincount(labels.ravel()) >= min_pixels
    keep[0] = False
    return keep[labels]


def fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """``mask`` with its holes (4-connected background components) of fewer than
    ``max_pixels`` pixels filled."""
    labels, _ = ndi.label(~mask)
    small = np.bincount(labels.ravel()) < max_pixels
    small[0] = False
    return mask | small[labels]


def nuclei_labels(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The nuclei mask of a brightfield RGB image (``uint8``) at ``mpp`` µm/px.

    Returns ``(mask, threshold, tissue)``, or ``None`` for an image that is not brightfield.
    The rule:

    1. hematoxylin density ``H`` by colour deconvolution (``skimage.color.rgb2hed``,
       Ruifrok & Johnston), smoothed with a Gaussian of sigma 1 px;
    2. tissue = ``wsi_infer.tissue.tissue_from_rgb(rgb, mpp, margin_um=0)``; the threshold is
       Otsu's on ``H`` of the tissue pixels, clipped at their 99.5th percentile;
    3. a pixel is a candidate when ``H`` > threshold, it is purple rather than green/blue
       (red > green, 3×3 mean; drops marking ink, which deconvolves as hematoxylin) and it is
       not black (some channel of the 3×3 mean >= 25; drops scanner padding and dust);
    4. morphology: opening with a 3×3 cross, holes < 50 µm² filled, 8-connected objects
       < 12 µm² removed.
    """
    tissue, modality = tissue_from_rgb(rgb, mpp=mpp, margin_um=0.0)
    if modality != "brightfield" or not tissue.any():
        return None
    h = ndi.gaussian_filter(rgb2hed(rgb)[..., 0], H_SIGMA)  # rgb2hed scales uint8 to 0..1
    values = h[tissue]
    threshold = float(threshold_otsu(np.minimum(values, np.percentile(values, H_CLIP_PERCENTILE))))
    smooth = ndi.uniform_filter(rgb.astype(np.float32), size=(3, 3, 1))
    purple = smooth[..., 0] > smooth[..., 1]
    not_black = smooth.max(axis=2) >= PADDING_MAX
    mask = (h > threshold) & purple & not_black
    mask = ndi.binary_opening(mask, structure=ndi.generate_binary_structure(2, 1))
    pixel_area = mpp * mpp
    mask = fill_small_holes(mask, round(MAX_HOLE_UM2 / pixel_area))
    mask = remove_small(mask, round(MIN_NUCLEUS_UM2 / pixel_area))
    return mask, threshold, tissue


def load_slide(path: Path, source: str, holdout_fraction: float) -> LabelledSlide | None:
    """Read and label one slide; ``None`` (with a note) for a slide that is not brightfield."""
    rgb, mpp = read_at_mpp(path)
    labelled = nuclei_labels(rgb, mpp)
    if labelled is None:
        print(f"  skip {path.name}: not a brightfield slide with tissue")
        return None
    mask, threshold, tissue = labelled
    train_rows = rgb.shape[0] - round(rgb.shape[0] * holdout_fraction)
    print(f"  {path.name}: {rgb.shape[1]}x{rgb.shape[0]} px at {mpp:.3f} µm/px, "
          f"tissue {tissue.mean():.1%}, H threshold {threshold:.4f}, nuclei {mask.mean():.1%} "
          f"of the slide ({mask[tissue].mean():.1%} of tissue)")
    return LabelledSlide(path.name, source, rgb, mask, train_rows, threshold)


def make_synthetic_slides(folder: Path, seed: int) -> list[Path]:
    """Render the synthetic slides of :data:`SYNTHETIC_SPECS` into ``folder``."""
    from wsi_infer.synthetic import make_slide

    paths = []
    width, height = SYNTHETIC_SIZE
    for i, (mpp, background) in enumerate(SYNTHETIC_SPECS):
        path = folder / f"synthetic-{i}-{background}-{mpp}mpp.svs"
        make_slide(path, width=width, height=height, mpp=mpp, kind="svs", seed=seed * 1000 + i,
                   background=background)
        paths.append(path)
    return paths


def load_dataset(
    real: Sequence[Path], synthetic: Sequence[Path], holdout_fraction: float
) -> list[LabelledSlide]:
    """Label every slide; the last synthetic slide is wholly held out."""
    slides = []
    for i, path in enumerate([*real, *synthetic]):
        is_synthetic = i >= len(real)
        held_out = is_synthetic and path == synthetic[-1]
        slide = load_slide(path, "synthetic" if is_synthetic else "real",
                           1.0 if held_out else holdout_fraction)
        if slide is not None:
            slides.append(slide)
    return slides


# --------------------------------------------------------------------------- augmentation


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


def jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild stain and scanner variation: brightness, contrast and per-channel gains.

    Kept small on purpose (the tissue model's lesson): the labels are a colour threshold, and
    large gains move pixels across it, i.e. create or erase "stain" the label does not follow.
    """
    gains = rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, size=3)
    contrast = rng.uniform(0.9, 1.1)
    mean = image.mean(axis=(0, 1), keepdims=True)
    return ((image - mean) * contrast + mean) * gains


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, padding_p: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90 and flips, mild colour jitter, sensor noise and (rarely) black padding."""
    k = int(rng.integers(4))
    image, label = np.rot90(image, k), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image, label = image.astype(np.float32), label.copy()
    image = jitter_colour(image, rng)
    image = image + rng.normal(0, rng.uniform(0, 3), image.shape)
    if rng.random() < padding_p:
        add_padding(image, label, rng)
    return np.clip(image, 0, 255), label


def label_edges(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` of the labelled pixels on the outline of ``mask``, as an (n, 2) array."""
    return np.argwhere(mask & ~ndi.binary_erosion(mask, border_value=1))


@dataclass
class CropSampler:
    """Random labelled training crops from the training rows of the slides.

    A slide is drawn with probability proportional to the square root of its training area,
    times :data:`REAL_WEIGHT` for real slides; then, with probability ``edge_p``, a crop that
    contains a random point of a nucleus outline, else a uniformly random crop.
    """

    slides: list[LabelledSlide]
    rng: np.random.Generator
    size: int = CROP
    edge_p: float = 0.6
    trainable: list[LabelledSlide] = field(init=False)
    weights: np.ndarray = field(init=False)
    edges: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.trainable = [s for s in self.slides
                          if s.train_rows >= self.size and s.shape[1] >= self.size]
        if not self.trainable:
            raise SystemExit(f"train.py: no slide has a {self.size}x{self.size} training region")
        areas = np.array([s.train_rows * s.shape[1] for s in self.trainable], np.float64)
        boost = np.array([REAL_WEIGHT if s.source == "real" else 1.0 for s in self.trainable])
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
        return augment(slide.rgb[window], slide.mask[window], self.rng)

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


# --------------------------------------------------------------------------- model


def build_model() -> nn.Sequential:
    """The fixed architecture: five 3x3 convolutions (dilations 1, 2, 4, 8, 1), no
    downsampling, one logit per pixel; receptive margin 1 + 2 + 4 + 8 + 1 = 16 px."""
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=4, dilation=4), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=8, dilation=8), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 1, 1),
    )


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
    """Adam with linear warm-up and cosine decay of the learning rate; returns the mean loss of every epoch."""
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
def predict_logits(model: nn.Module, rgb: np.ndarray, tile: int = EVAL_TILE) -> np.ndarray:
    """Logits for a whole image, tile by tile with :data:`RECEPTIVE_MARGIN` context: the same
    result as one pass over the whole image, in bounded memory."""
    h, w = rgb.shape[:2]
    m = RECEPTIVE_MARGIN
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


def evaluate(model: nn.Module, slides: Sequence[LabelledSlide]) -> dict[str, Any]:
    """Dice and IoU of the thresholded model (logit > 0) on every slide's held-out rows.

    The first held-out rows get the rows above them as context, as they would in a whole-slide
    run; only held-out pixels are scored.
    """
    per_slide: dict[str, dict[str, Any]] = {}
    overall = Score(0, 0, 0)
    for slide in slides:
        top = max(0, slide.train_rows - RECEPTIVE_MARGIN)
        logits = predict_logits(model, slide.rgb[top:])[slide.train_rows - top:]
        reference = slide.mask[slide.train_rows:]
        score = Score.of(logits > 0, reference)
        overall += score
        per_slide[slide.name] = {
            "dice": round(score.dice, 4), "iou": round(score.iou, 4),
            "pixels": int(reference.size), "nuclei_fraction": round(float(reference.mean()), 4),
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


def export_torchscript(model: nn.Module, path: Path) -> None:
    """A traced module saved with ``torch.jit.save`` (loadable without this file).

    Traced rather than scripted: a scripted ``nn.Conv2d`` lists its constants in set order,
    which depends on Python's hash seed, so the scripted file (and its sha256) would change
    from run to run; the traced file is byte-for-byte reproducible (for the same script, torch
    and install paths: TorchScript stores debug stack traces).  The network has no
    shape-dependent control flow, so the trace is valid for any N, H, W (checked by
    :func:`verify_exports`).  Deterministic algorithms are switched off while tracing, else
    the flag would be baked into every traced convolution.
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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- card and README


def model_card(onnx_path: Path, torchscript_path: Path) -> dict[str, Any]:
    """The model card, in the format of ``wsi_infer/schemas/model-card.schema.json``."""
    return {
        "schema_version": 1,
        "name": NAME,
        "version": VERSION,
        "task": "segmentation",
        "description": CARD_DESCRIPTION,
        "weights": [
            {"format": "onnx", "file": onnx_path.name, "sha256": sha256(onnx_path)},
            {"format": "torchscript", "file": torchscript_path.name,
             "sha256": sha256(torchscript_path)},
        ],
        "input": {"layout": "NCHW", "channel_order": "RGB", "size": None, "size_multiple": 1,
                  "tile_size": 512, "scale": SCALE, "mean": list(MEAN), "std": list(STD)},
        "mpp": MPP,
        "receptive_margin": RECEPTIVE_MARGIN,
        "output": {"classes": [{"name": "nuclei", "color": "#7b2cbf"}],
                   "activation": "sigmoid", "stride": 1},
        "license": "Apache-2.0",
        "citation": f"wsi-infer built-in nuclei model v{VERSION}, trained with "
                    "models/nuclei/train.py",
    }


def render_readme(report: dict[str, Any], card: dict[str, Any]) -> str:
    """The model's README: what it is, how it was trained, how well it does, how to retrain."""
    metrics = report["metrics"]
    rows = "\n".join(
        f"| {name} | {s['held_out']} | {report['thresholds'][name]:.4f} | "
        f"{s['nuclei_fraction']:.1%} | {s['dice']:.4f} | {s['iou']:.4f} |"
        for name, s in metrics["per_slide"].items()
    )
    overall = metrics["overall"]
    weights = "\n".join(f"| `{w['file']}` | {w['format']} | `{w['sha256']}` |"
                        for w in card["weights"])
    slides = "\n".join(f"  - `{s}`" for s in report["slides"])
    return f"""# `nuclei` — wsi-infer's built-in nuclei model (v{VERSION})

{CARD_DESCRIPTION}

A small fully convolutional network that gives, for every pixel of an H&E slide read at
**0.5 µm/px** (about 20×), the logit of "nucleus" (the card asks for a sigmoid): pixels rich in
hematoxylin, i.e. cell nuclei. It is a semantic mask, not an instance segmentation: touching
nuclei are not separated. It is wsi-infer's full-resolution built-in model (the `tissue` model
works at 4 µm/px), meant as a fast, honest, reproducible example and a smoke test of
full-resolution runs, not as a diagnostic tool.

```
wsi-infer slide.svs --model nuclei --out slide-nuclei.zarr
```

## Architecture

```
Conv2d(3, 24, 3, padding=1), ReLU
Conv2d(24, 24, 3, padding=2, dilation=2), ReLU
Conv2d(24, 24, 3, padding=4, dilation=4), ReLU
Conv2d(24, 24, 3, padding=8, dilation=8), ReLU
Conv2d(24, 24, 3, padding=1), ReLU
Conv2d(24, 1, 1)            # raw logit, no sigmoid in the graph
```

{report['parameters']} parameters; no downsampling (output stride 1, any input size, so a
tiled run with a {RECEPTIVE_MARGIN} px margin equals a whole-image run); receptive field
33×33 px, i.e. a receptive margin of {RECEPTIVE_MARGIN} px (8 µm) on each side.
Input: NCHW float32 RGB, `x = (pixel / 255 - 0.5) / 0.25`.

| file | format | sha256 |
|---|---|---|
{weights}

Both files give the same logits (largest difference measured by `train.py` between ONNX
Runtime and TorchScript, on odd-sized inputs such as 300×257: {report['export_max_abs_diff']:.1e}).
The ONNX graph is opset 17 with dynamic batch, height and width; `nuclei.pt` is a traced
TorchScript module (valid for any input size: the network has no shape-dependent control
flow).

## Training

- **Labels**, derived by `train.py` (`nuclei_labels`) on each whole slide at 0.5 µm/px:
  1. hematoxylin density `H` by colour deconvolution (`skimage.color.rgb2hed`, Ruifrok &
     Johnston stain vectors), smoothed with a Gaussian of σ = {H_SIGMA:g} px (removes JPEG and
     chromatin speckle, so pale nuclei are not cut into fragments);
  2. tissue from wsi-infer's heuristic detector,
     `wsi_infer.tissue.tissue_from_rgb(rgb, mpp=0.5, margin_um=0)`; the slide's threshold is
     Otsu's threshold of `H` over its tissue pixels, with `H` clipped at their
     {H_CLIP_PERCENTILE}th percentile (so a few extreme pixels such as marking ink cannot drag
     it up);
  3. a pixel is a nucleus candidate when `H` > threshold, it is purple rather than
     green/blue (red > green on a 3×3 mean: drops the green-blue marking ink of CMU-1, which
     deconvolves as hematoxylin) and not black (some channel of the 3×3 mean ≥ {PADDING_MAX}:
     drops scanner padding and dust);
  4. morphology: opening with a 3×3 cross, holes smaller than {MAX_HOLE_UM2:g} µm² filled,
     8-connected objects smaller than {MIN_NUCLEUS_UM2:g} µm² removed.

  The threshold is per slide (it adapts to stain strength) and is part of the label
  definition (computed over the whole slide, held-out rows included; nothing is fitted on
  them); the network has to infer it from the look of the tile. Dark non-nuclear hematoxylin (keratin, mucin, dense basophilic
  debris) is labelled, and so predicted, as "nuclei".
- **Data**, all read at 0.5 µm/px with `wsi_infer.readers.open_slide` and
  `wsi_infer.resolution.plan_level` / `read_target` (a level within 2 % of 0.5 µm/px is read
  as is, so CMU-1 at 0.499 µm/px is not resampled):
{slides}
  - {len(SYNTHETIC_SPECS)} synthetic H&E slides of {SYNTHETIC_SIZE[0]}×{SYNTHETIC_SIZE[1]} px
    rendered by `wsi_infer.synthetic.make_slide` (seeds `1000 × seed + i`, level-0 mpp 0.5 or
    0.25 — the latter downsampled ×2 on reading —, half of them with black scanner padding;
    purple nuclei of 6–10 µm), generated into a temporary folder.
- **Held out**: the bottom {HOLDOUT_FRACTION:.0%} of the rows of every slide, and the whole
  last synthetic slide; no training crop touches them.
- **Augmentation**: random rot90 and flips; mild colour jitter (brightness ×0.95–1.05,
  per-channel gains ×0.98–1.02, contrast ×0.9–1.1 — kept small because the labels are a colour
  threshold and large gains create or erase "stain" that the labels do not follow); Gaussian
  noise (σ ≤ 3); black rectangles painted as scanner padding (10 % of crops, labelled
  background). No blur: it would move nucleus outlines away from their labels.
- **Sampling**: random {CROP}×{CROP} crops; a slide is drawn with probability proportional
  to the square root of its training area, ×{REAL_WEIGHT:g} for real slides; then 60 % of the
  crops are placed to contain a random point of a nucleus outline, the rest anywhere.
- **Optimisation**: batch {report['batch_size']}, {report['epochs']} epochs × {report['steps_per_epoch']} steps,
  Adam with 10 % linear warm-up then cosine decay (peak learning rate {report['lr']}), loss = binary
  cross-entropy + soft Dice, seed {report['seed']}.
- **Time**: {report['train_seconds']:.0f} s of training, {report['total_seconds']:.0f} s for
  the whole script (rendering, reading and labelling slides, evaluation, export; {report['cpu_seconds']:.0f} s
  of CPU time) on {report['machine']}, torch {torch.__version__}. Wall time depends on the
  other jobs: runs of this configuration took from 4½ minutes (quiet) to 11 (busy).

## Held-out results

Thresholding the logit at 0 (probability 0.5), against the labels above, on held-out pixels
only (pixel-wise Dice and IoU of the nuclei class):

| slide | held out | H threshold | nuclei (held-out px) | Dice | IoU |
|---|---|---|---|---|---|
{rows}
| **all (pooled pixels)** | | | | **{overall['dice']:.4f}** | **{overall['iou']:.4f}** |

Limits: the scores measure agreement with a colour-deconvolution rule, not with a
pathologist's annotation. The only real training slide is a single skin section (CMU-1);
other organs, stains and scanners may need a different threshold than the one the network
learned. Touching nuclei merge; pale, out-of-focus or vesicular nuclei may be missed, and
dark non-nuclear material may be marked. Fluorescence slides are out of scope.

## Licence and data

- Weights: **Apache-2.0**, like wsi-infer.
- CMU-1-Small-Region.svs (OpenSlide test data, Carnegie Mellon University): CC0 1.0.
- Synthetic slides: generated by wsi-infer, no restrictions.

## Retrain

From the repository root, with wsi-infer, torch, onnxruntime and scikit-image installed:

```
{report['command']}
```

Training is deterministic for a given seed, torch version and thread count (`--threads`):
two runs give the same weights and a byte-identical `nuclei.onnx`. `nuclei.pt` is
byte-identical too as long as `train.py`, torch and the install paths are unchanged
(TorchScript stores debug stack traces with file paths and line numbers; the file is traced,
not scripted, because scripted modules also depend on Python's hash seed). The files written
are `nuclei.onnx`, `nuclei.pt`, `card.json`, `metrics.json` and this README; only the timings
in the README and `metrics.json` change between runs.
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--slides", nargs="+", default=list(DEFAULT_SLIDES),
                        help="real slides (paths or globs) to train on, besides synthetic ones")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for the weights, card and README")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=70)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="train on the real slides only")
    return parser.parse_args(argv)


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    """Make the run repeatable: seeded torch, deterministic kernels, a fixed thread count."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = load_average()
    cpu_start = time.process_time()
    rng = seed_everything(args.seed, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    real = expand_slide_paths(args.slides)

    with tempfile.TemporaryDirectory(prefix="wsi-infer-nuclei-") as tmp:
        synthetic: list[Path] = []
        if not args.no_synthetic:
            print(f"rendering {len(SYNTHETIC_SPECS)} synthetic slides ...")
            synthetic = make_synthetic_slides(Path(tmp), args.seed)
        print(f"reading and labelling slides at {MPP} µm/px ...")
        slides = load_dataset(real, synthetic, HOLDOUT_FRACTION)

    model = build_model()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"training ({parameters} parameters) ...")
    train_start = time.perf_counter()
    history = train(model, CropSampler(slides, rng), epochs=args.epochs,
                    steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr)
    train_seconds = time.perf_counter() - train_start

    print("evaluating on held-out pixels ...")
    metrics = evaluate(model, slides)
    print(json.dumps(metrics, indent=2))

    onnx_path, torchscript_path = args.out / f"{NAME}.onnx", args.out / f"{NAME}.pt"
    export_onnx(model, onnx_path)
    export_torchscript(model, torchscript_path)
    max_diff = verify_exports(onnx_path, torchscript_path, args.seed)
    print(f"exports agree (max |ONNX - TorchScript| = {max_diff:.1e})")

    card = model_card(onnx_path, torchscript_path)
    (args.out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    report = {
        "slides": [str(p) for p in real], "parameters": parameters, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "loss_per_epoch": [round(v, 4) for v in history],
        "thresholds": {s.name: round(s.threshold, 5) for s in slides},
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), {args.threads} threads, "
                   f"shared with other jobs (1-minute load average {load_start:.1f} at the start, "
                   f"{load_average():.1f} at the end)",
        "export_max_abs_diff": max_diff, "metrics": metrics,
        "command": retrain_command(args),
    }
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render_readme(report, card))
    print(f"wrote {onnx_path}, {torchscript_path}, card.json, metrics.json and README.md "
          f"in {args.out} ({report['total_seconds']:.0f} s)")
    return 0


def load_average() -> float:
    """The 1-minute load average of the machine (NaN where the OS does not tell)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def retrain_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    parts = ["python models/nuclei/train.py", "--out models/nuclei",
             f"--epochs {args.epochs}", f"--seed {args.seed}"]
    if list(args.slides) != list(DEFAULT_SLIDES):
        parts.insert(1, "--slides " + " ".join(args.slides))
    defaults = parse_args([])
    for name in ("steps_per_epoch", "batch_size", "lr", "threads"):
        if getattr(args, name) != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    if args.no_synthetic:
        parts.append("--no-synthetic")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
