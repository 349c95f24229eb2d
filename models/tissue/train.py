"""Train wsi-infer's built-in ``tissue`` model and write its weights, model card and README.

The model segments tissue vs background (glass, scanner padding) at 4 µm/px.  Its labels are
the project's own heuristic tissue mask (:func:`wsi_infer.tissue.tissue_from_rgb` with no
safety margin), computed on each whole slide at 4 µm/px, so the network learns a fast,
tile-local approximation of that heuristic.

Data: the real brightfield slides given with ``--slides`` (by default CMU-1-Small-Region and
the CAMELYON16 DICOM sample) plus synthetic H&E slides rendered at run time with
:func:`wsi_infer.synthetic.make_slide`.  The bottom :data:`HOLDOUT_FRACTION` of every slide and
the whole last synthetic slide are held out: no training crop touches them.

Retrain (about 3-5 minutes on a 2-core CPU)::

    python models/tissue/train.py --out models/tissue

Outputs in ``--out``: ``tissue.onnx``, ``tissue.pt`` (TorchScript), ``card.json`` and
``README.md``, plus ``metrics.json`` with the held-out scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from wsi_infer.tissue import tissue_from_rgb

# This file is run as a script (python models/tissue/train.py), so models/ is not on sys.path:
# add it to import the training code shared with the other built-in models (models/_training.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _training import (
    Background,
    CropSampler,
    LabelledSlide,
    add_padding,
    build_parser,
    evaluate,
    expand_slide_paths,
    export_and_verify,
    export_scripted,
    jitter_colour,
    load_training_slides,
    machine_description,
    model_card,
    read_at_mpp,
    retrain_command,
    rotate_flip,
    seed_everything,
    sensor_noise,
    slide_list,
    train,
    weights_table,
    write_card,
    write_report,
)

NAME = "tissue"
VERSION = "1.0.0"
#: Resolution the model works at (µm/px).
MPP = 4.0
# Input normalisation (x = (pixel * SCALE - MEAN) / STD): shared, see models/_training.py.
#: Receptive field radius of the network in pixels: 1 + 2 + 4 + 8.
RECEPTIVE_MARGIN = 15
#: Side of the square training crops (pixels at 4 µm/px).
CROP = 128
#: Fraction of each slide's rows, at the bottom, that is never trained on.
HOLDOUT_FRACTION = 0.2

DATA_DIR = Path("/work/shared/data/slides")
DEFAULT_SLIDES = (
    str(DATA_DIR / "CMU-1-Small-Region.svs"),
    str(DATA_DIR / "multi_frame_jpeg2000_camelyon_challenge_image.dcm"),
)
#: (level-0 mpp, background) of each synthetic slide; the last one is held out entirely.
SYNTHETIC_SPECS: tuple[tuple[float, Background], ...] = (
    (0.25, "glass"),
    (0.5, "black"),
    (0.25, "black"),
    (0.5, "glass"),
    (0.25, "glass"),
    (0.5, "black"),
)
SYNTHETIC_SIZE = (8000, 6000)  # (width, height) in level-0 pixels

CARD_DESCRIPTION = (
    "Tissue vs background (glass, scanner padding) at 4 µm/px; the wsi-infer default."
)


# --------------------------------------------------------------------------- data


def load_slide(path: Path, source: str, holdout_fraction: float) -> LabelledSlide | None:
    """Read and label one slide; ``None`` (with a note) for a slide that is not brightfield."""
    rgb, _ = read_at_mpp(path, MPP)
    mask, modality = tissue_from_rgb(rgb, mpp=MPP, margin_um=0.0)
    if modality != "brightfield":
        print(f"  skip {path.name}: {modality}, only brightfield slides are used")
        return None
    train_rows = rgb.shape[0] - round(rgb.shape[0] * holdout_fraction)
    print(f"  {path.name}: {rgb.shape[1]}x{rgb.shape[0]} px at {MPP} µm/px, "
          f"tissue {mask.mean():.1%}")
    return LabelledSlide(path.name, source, rgb, mask, train_rows)


# --------------------------------------------------------------------------- augmentation


def synthetic_glass(rng: np.random.Generator, size: int) -> np.ndarray:
    """A crop of bare glass: near-white, barely tinted, with a soft gradient and sensor noise."""
    base = rng.uniform(215, 250) + rng.uniform(-4, 4, size=3)
    ramp = np.linspace(-1, 1, size)[:, None] * rng.uniform(-6, 6)
    image = base[None, None, :] + ramp[..., None] + rng.normal(0, rng.uniform(0.5, 3), (size, size, 3))
    return np.clip(image, 0, 255)


def blur_and_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sometimes a slight Gaussian blur (focus), always a little sensor noise."""
    if rng.random() < 0.3:
        image = ndi.gaussian_filter(image, sigma=(rng.uniform(0.3, 1.2),) * 2 + (0,))
    return sensor_noise(image, rng)


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
    glass_p: float = 0.05, padding_p: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, rot90, glass replacement, colour jitter, blur/noise and padding.

    The colour jitter's per-channel gains stay within 2 %: more would tint bare glass past
    the saturation that the labels call tissue.
    """
    image, label = rotate_flip(image, label, rng)
    if rng.random() < glass_p:
        image, label[:] = synthetic_glass(rng, image.shape[0]), False
    image = jitter_colour(image, rng, brightness=(0.92, 1.08), contrast=(0.85, 1.15))
    image = blur_and_noise(image, rng)
    if rng.random() < padding_p:
        add_padding(image, label, rng)
    return np.clip(image, 0, 255), label


# --------------------------------------------------------------------------- model


def build_model() -> nn.Sequential:
    """The fixed architecture: four dilated 3x3 convolutions, no downsampling, one logit."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=4, dilation=4), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=8, dilation=8), nn.ReLU(),
        nn.Conv2d(16, 1, 1),
    )


# --------------------------------------------------------------------------- README


def render_readme(report: dict[str, Any], card: dict[str, Any]) -> str:
    """The model's README: what it is, how it was trained, how well it does, how to retrain."""
    metrics = report["metrics"]
    rows = "\n".join(
        f"| {name} | {s['held_out']} | {s['tissue_fraction']:.1%} | {s['dice']:.4f} | "
        f"{s['iou']:.4f} |"
        for name, s in metrics["per_slide"].items()
    )
    overall = metrics["overall"]
    weights = weights_table(card)
    slides = slide_list(report)
    return f"""# `tissue` — wsi-infer's built-in tissue model (v{VERSION})

{CARD_DESCRIPTION}

A tiny fully convolutional network that gives, for every pixel of a slide read at
**4 µm/px**, the logit of "tissue" (the card asks for a sigmoid). Background is bare glass and
black scanner padding. It is wsi-infer's default model, so that `wsi-infer run slide.svs`
works out of the box, and a small, fast, honest example of a model card.

## Architecture

```
Conv2d(3, 16, 3, padding=1), ReLU
Conv2d(16, 16, 3, padding=2, dilation=2), ReLU
Conv2d(16, 16, 3, padding=4, dilation=4), ReLU
Conv2d(16, 16, 3, padding=8, dilation=8), ReLU
Conv2d(16, 1, 1)            # raw logit, no sigmoid in the graph
```

{report['parameters']} parameters; no downsampling (output stride 1, any input size);
receptive field 31×31 px, i.e. a receptive margin of 15 px (60 µm) on each side.
Input: NCHW float32 RGB, `x = (pixel / 255 - 0.5) / 0.25`.

| file | format | sha256 |
|---|---|---|
{weights}

Both files give the same logits (largest difference measured by `train.py` between ONNX
Runtime and TorchScript: {report['export_max_abs_diff']:.1e}). The ONNX graph is opset 17
with dynamic batch, height and width.

## Training

- **Labels**: wsi-infer's own heuristic tissue detector,
  `wsi_infer.tissue.tissue_from_rgb(rgb, mpp=4.0, margin_um=0.0)` (saturation above an Otsu
  threshold plus optical density, padding excluded, morphological clean-up, holes filled,
  specks < 80×80 µm removed), computed on each whole slide at 4 µm/px. Only brightfield slides
  are used. The network is therefore a fast, tile-local approximation of that detector.
- **Data**, all read at 4 µm/px with `wsi_infer.readers.open_slide` and
  `wsi_infer.resolution.plan_level` / `read_target`:
{slides}
  - {len(SYNTHETIC_SPECS)} synthetic H&E slides of {SYNTHETIC_SIZE[0]}×{SYNTHETIC_SIZE[1]} px
    rendered by `wsi_infer.synthetic.make_slide` (seeds `1000 × seed + i`, level-0 mpp 0.25 or
    0.5, half of them with black scanner padding), generated into a temporary folder.
- **Held out**: the bottom {HOLDOUT_FRACTION:.0%} of the rows of every slide, and the whole
  last synthetic slide; no training crop touches them.
- **Augmentation**: random rot90 and flips; mild colour jitter (brightness ×0.92–1.08,
  per-channel gains ×0.98–1.02, contrast ×0.85–1.15); Gaussian blur (σ 0.3–1.2 px, 30 % of
  crops); Gaussian noise (σ ≤ 3); black rectangles painted as scanner padding, mostly bands
  from an edge (25 % of crops, labelled background); pure synthetic glass crops (5 %,
  labelled background).
- **Sampling**: random {CROP}×{CROP} crops; a slide is drawn with probability proportional
  to the square root of its training area, then half of the crops are placed to contain a
  random point of the label outline (where the mistakes are), the other half anywhere.
- **Optimisation**: batch {report['batch_size']}, {report['epochs']} epochs × {report['steps_per_epoch']} steps,
  Adam with 10 % linear warm-up then cosine decay (peak learning rate {report['lr']}), loss = binary
  cross-entropy + soft Dice, seed {report['seed']}.
- **Time**: {report['train_seconds']:.0f} s of training, {report['total_seconds']:.0f} s for
  the whole script (rendering, reading and labelling slides, evaluation, export) on
  {report['machine']}, torch {torch.__version__}.

## Held-out results

Thresholding the logit at 0 (probability 0.5), against the heuristic labels, on held-out
pixels only:

| slide | held out | tissue | Dice | IoU |
|---|---|---|---|---|
{rows}
| **all (pooled pixels)** | | | **{overall['dice']:.4f}** | **{overall['iou']:.4f}** |

Limits: the labels fill enclosed holes and drop small specks over the *whole* slide, which a
network that sees only 31×31 px (124 µm) cannot reproduce exactly: large enclosed lumina or
glass gaps inside tissue may be predicted as background. For finding where to run a heavier
model, wsi-infer dilates tissue masks by a safety margin anyway. Fluorescence slides are out
of scope for this model.

## Licence and data

- Weights: **Apache-2.0**, like wsi-infer.
- CMU-1-Small-Region.svs (OpenSlide test data, Carnegie Mellon University): CC0 1.0.
- multi_frame_jpeg2000_camelyon_challenge_image.dcm (a CAMELYON16 image converted to DICOM):
  CC0 1.0.
- Synthetic slides: generated by wsi-infer, no restrictions.

## Retrain

From the repository root, with wsi-infer and torch installed:

```
{report['command']}
```

Training is deterministic for a given seed, torch version and thread count (`--threads`);
the files written are `tissue.onnx`, `tissue.pt`, `card.json`, `metrics.json` and this README.
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with this model's defaults."""
    parser = build_parser(__doc__.split("\n\n")[0], default_slides=DEFAULT_SLIDES,
                          default_out=Path(__file__).resolve().parent, steps_per_epoch=100)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    rng = seed_everything(args.seed, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    real = expand_slide_paths(args.slides)
    slides = load_training_slides(
        real, load_slide, name=NAME, mpp=MPP, seed=args.seed, synthetic_specs=SYNTHETIC_SPECS,
        synthetic_size=SYNTHETIC_SIZE, holdout_fraction=HOLDOUT_FRACTION,
        with_synthetic=not args.no_synthetic,
    )

    model = build_model()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"training ({parameters} parameters) ...")
    train_start = time.perf_counter()
    sampler = CropSampler(slides, rng, augment, size=CROP, edge_p=0.5)
    history = train(model, sampler, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                    batch_size=args.batch_size, lr=args.lr)
    train_seconds = time.perf_counter() - train_start

    print("evaluating on held-out pixels ...")
    metrics = evaluate(model, slides, margin=RECEPTIVE_MARGIN, class_name=NAME)
    print(json.dumps(metrics, indent=2))

    onnx_path, torchscript_path, max_diff = export_and_verify(
        model, args.out, NAME, export_scripted, args.seed)
    card = model_card(onnx_path, torchscript_path, name=NAME, version=VERSION,
                      description=CARD_DESCRIPTION, mpp=MPP, receptive_margin=RECEPTIVE_MARGIN,
                      color="#2ca02c")
    write_card(args.out, card)
    report = {
        "slides": [str(p) for p in real], "parameters": parameters, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "loss_per_epoch": [round(v, 4) for v in history],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine_description(args.threads),
        "export_max_abs_diff": max_diff, "metrics": metrics,
        "command": retrain_command(args, parse_args([]), NAME),
    }
    write_report(args.out, report, render_readme(report, card), onnx_path, torchscript_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
