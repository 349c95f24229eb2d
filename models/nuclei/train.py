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
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from torch import nn

from wsi_infer.tissue import tissue_from_rgb

# This file is run as a script (python models/nuclei/train.py), so models/ is not on sys.path:
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
    export_traced,
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

NAME = "nuclei"
VERSION = "1.0.0"
#: Resolution the model works at (µm/px).
MPP = 0.5
# Input normalisation (x = (pixel * SCALE - MEAN) / STD): shared, see models/_training.py.
#: Receptive field radius of the network in pixels: 1 + 2 + 4 + 8 + 1.
RECEPTIVE_MARGIN = 16
#: Side of the square training crops (pixels at 0.5 µm/px).
CROP = 96
#: Fraction of each slide's rows, at the bottom, that is never trained on.
HOLDOUT_FRACTION = 0.2
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
SYNTHETIC_SPECS: tuple[tuple[float, Background], ...] = (
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
class NucleiSlide(LabelledSlide):
    """A slide read whole at 0.5 µm/px with its nuclei labels."""

    threshold: float  # the slide's hematoxylin threshold


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


def load_slide(path: Path, source: str, holdout_fraction: float) -> NucleiSlide | None:
    """Read and label one slide; ``None`` (with a note) for a slide that is not brightfield."""
    rgb, mpp = read_at_mpp(path, MPP)
    labelled = nuclei_labels(rgb, mpp)
    if labelled is None:
        print(f"  skip {path.name}: not a brightfield slide with tissue")
        return None
    mask, threshold, tissue = labelled
    train_rows = rgb.shape[0] - round(rgb.shape[0] * holdout_fraction)
    print(f"  {path.name}: {rgb.shape[1]}x{rgb.shape[0]} px at {mpp:.3f} µm/px, "
          f"tissue {tissue.mean():.1%}, H threshold {threshold:.4f}, nuclei {mask.mean():.1%} "
          f"of the slide ({mask[tissue].mean():.1%} of tissue)")
    return NucleiSlide(path.name, source, rgb, mask, train_rows, threshold)


# --------------------------------------------------------------------------- augmentation


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, padding_p: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90 and flips, mild colour jitter, sensor noise and (rarely) black padding.

    The colour jitter is kept small on purpose (the tissue model's lesson): the labels are a
    colour threshold, and large gains move pixels across it, i.e. create or erase "stain" the
    label does not follow.
    """
    image, label = rotate_flip(image, label, rng)
    image = jitter_colour(image, rng, brightness=(0.95, 1.05), contrast=(0.9, 1.1))
    image = sensor_noise(image, rng)
    if rng.random() < padding_p:
        add_padding(image, label, rng)
    return np.clip(image, 0, 255), label


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


# --------------------------------------------------------------------------- README


def render_readme(report: dict[str, Any], card: dict[str, Any]) -> str:
    """The model's README: what it is, how it was trained, how well it does, how to retrain."""
    metrics = report["metrics"]
    rows = "\n".join(
        f"| {name} | {s['held_out']} | {report['thresholds'][name]:.4f} | "
        f"{s['nuclei_fraction']:.1%} | {s['dice']:.4f} | {s['iou']:.4f} |"
        for name, s in metrics["per_slide"].items()
    )
    overall = metrics["overall"]
    weights = weights_table(card)
    slides = slide_list(report)
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
byte-identical too as long as `train.py`, `models/_training.py`, torch and the install paths are unchanged
(TorchScript stores debug stack traces with file paths and line numbers; the file is traced,
not scripted, because scripted modules also depend on Python's hash seed). The files written
are `nuclei.onnx`, `nuclei.pt`, `card.json`, `metrics.json` and this README; only the timings
in the README and `metrics.json` change between runs.
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with this model's defaults."""
    parser = build_parser(__doc__.split("\n\n")[0], default_slides=DEFAULT_SLIDES,
                          default_out=Path(__file__).resolve().parent, steps_per_epoch=70)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = load_average()
    cpu_start = time.process_time()
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
    sampler = CropSampler(slides, rng, augment, size=CROP, edge_p=0.6, real_weight=REAL_WEIGHT)
    history = train(model, sampler, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                    batch_size=args.batch_size, lr=args.lr)
    train_seconds = time.perf_counter() - train_start

    print("evaluating on held-out pixels ...")
    metrics = evaluate(model, slides, margin=RECEPTIVE_MARGIN, class_name=NAME)
    print(json.dumps(metrics, indent=2))

    onnx_path, torchscript_path, max_diff = export_and_verify(
        model, args.out, NAME, export_traced, args.seed)
    card = model_card(onnx_path, torchscript_path, name=NAME, version=VERSION,
                      description=CARD_DESCRIPTION, mpp=MPP, receptive_margin=RECEPTIVE_MARGIN,
                      color="#7b2cbf")
    write_card(args.out, card)
    report = {
        "slides": [str(p) for p in real], "parameters": parameters, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "loss_per_epoch": [round(v, 4) for v in history],
        "thresholds": {s.name: round(s.threshold, 5) for s in slides},
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "machine": f"{machine_description(args.threads)}, "
                   f"shared with other jobs (1-minute load average {load_start:.1f} at the start, "
                   f"{load_average():.1f} at the end)",
        "export_max_abs_diff": max_diff, "metrics": metrics,
        "command": retrain_command(args, parse_args([]), NAME),
    }
    write_report(args.out, report, render_readme(report, card), onnx_path, torchscript_path)
    return 0


def load_average() -> float:
    """The 1-minute load average of the machine (NaN where the OS does not tell)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


if __name__ == "__main__":
    sys.exit(main())
