"""Load models behind batchers and predict a slide region through them, exactly as
:func:`wsi_infer.region.predict_region` (and so ``wsi-infer SLIDE --no-tissue-mask``) does."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np

from ..backends import BackendName, create_backend
from ..errors import RegionTooLargeError
from ..models import ModelCard, resolve_model
from ..plan import RunOptions, plan_run
from ..predictor import Predictor
from ..rect import Rect
from ..region import RegionPrediction
from ..resources import Resources
from ..stitching import predict_window
from .batcher import BatchingPredictor, Ticket

#: Output pixels one request may ask for by default (2048 x 2048 at the model's resolution).
DEFAULT_MAX_REGION_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class Tiling:
    """Tile options that shape the output, as ``wsi-infer run --tile-size/--halo``."""

    tile_size: int | None = None
    halo: int | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded once on its device, behind its own batching queue."""

    name: str
    spec: str  # as given on the command line (built-in name or card path)
    card: ModelCard
    batcher: BatchingPredictor


def load_predictor(spec: str, backend: BackendName, device: str,
                   threads: int | None = None) -> Predictor:
    """Load a model (built-in name or card path) on a device and run it once on a blank tile,
    so a model that does not match its card, or a missing device, fails at start."""
    card = resolve_model(spec)
    predictor = Predictor(card, create_backend(card, backend, device, threads=threads))
    side = card.input.size[0] if card.input.size else card.input.tile_size + 2 * card.receptive_margin
    predictor.predict(np.full((1, side, side, 3), 255.0, np.float32))
    return predictor


def predict_served_region(
    model: LoadedModel,
    slide_path: Path,
    x: int,
    y: int,
    width: int,
    height: int,
    *,
    ticket: Ticket,
    resources: Resources,
    mpp: float | None = None,
    tiling: Tiling = Tiling(),
    max_output_pixels: int | None = None,
) -> RegionPrediction:
    """Predict the level-0 region ``(x, y, width, height)``; tiles go through the model's
    batcher under ``ticket`` (all tiles of a region are queued together, up to ``max_batch``
    at a time, so they run in as few batches as possible and mix with other requests' tiles).

    Planned as ``predict_region`` and a whole-slide run are (``plan_run``); no tissue mask.
    Slides are opened once in ``resources``.
    """
    started = time.perf_counter()
    card = model.card
    slide = resources.slide(slide_path)
    options = RunOptions(model=model.spec, mpp=mpp, tile_size=tiling.tile_size,
                         halo=tiling.halo, tissue_mask=False)
    run = plan_run(slide, card, options, fingerprint=resources.fingerprint(slide_path))
    plan, slide_mpp = run.level, run.mpp
    wanted_w = math.ceil(width * slide_mpp.x / plan.mpp_x)
    wanted_h = math.ceil(height * slide_mpp.y / plan.mpp_y)
    if max_output_pixels is not None and wanted_w * wanted_h > max_output_pixels:
        raise RegionTooLargeError(
            f"the region is {wanted_w} x {wanted_h} = {wanted_w * wanted_h} px at the model's "
            f"{plan.mpp_x:.4g} µm/px; this service allows at most {max_output_pixels} px per "
            "request: ask for smaller regions")
    rect = run.output_rect(Rect.of_size(x, y, width, height))
    batcher = model.batcher
    result = predict_window(partial(run.read, slide), run.geometry, rect,
                            cast(Predictor, batcher.for_ticket(ticket)),
                            batch_size=min(batcher.max_batch, batcher.max_queue),
                            has_tissue=None)
    return RegionPrediction(
        probabilities=result.probabilities, x0=rect.x0, y0=rect.y0, mpp_x=plan.mpp_x, mpp_y=plan.mpp_y,
        slide_mpp=slide_mpp, classes=card.classes, model=card.name, tiles_run=result.tiles_run,
        seconds=time.perf_counter() - started)
