"""Load models behind batchers and predict a slide region through them, exactly as
:func:`wsi_infer.region.predict_region` (and so ``wsi-infer SLIDE --no-tissue-mask``) does."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from ..backends import BackendName, create_backend
from ..errors import RegionTooLargeError
from ..models import ModelCard, resolve_model
from ..pipeline import _cached_slide, plan_slide
from ..predictor import Predictor
from ..region import RegionPrediction, output_rectangle
from ..resolution import read_target
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
    mpp: float | None = None,
    tiling: Tiling = Tiling(),
    max_output_pixels: int | None = None,
) -> RegionPrediction:
    """Predict the level-0 region ``(x, y, width, height)``; tiles go through the model's
    batcher under ``ticket`` (all tiles of a region are queued together, up to ``max_batch``
    at a time, so they run in as few batches as possible and mix with other requests' tiles).

    Same level plan, tile grid, halo and reads as ``predict_region``; no tissue mask.
    """
    started = time.perf_counter()
    card = model.card
    slide = _cached_slide(str(slide_path), "auto")
    slide_mpp, plan, geometry = plan_slide(slide, card, mpp=mpp, tile_size=tiling.tile_size,
                                           halo=tiling.halo)
    wanted_w = math.ceil(width * slide_mpp.x / plan.mpp_x)
    wanted_h = math.ceil(height * slide_mpp.y / plan.mpp_y)
    if max_output_pixels is not None and wanted_w * wanted_h > max_output_pixels:
        raise RegionTooLargeError(
            f"the region is {wanted_w} x {wanted_h} = {wanted_w * wanted_h} px at the model's "
            f"{plan.mpp_x:.4g} µm/px; this service allows at most {max_output_pixels} px per "
            "request: ask for smaller regions")
    ox0, oy0, ox1, oy1 = output_rectangle(plan, slide_mpp, x, y, width, height)

    def read(ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        return read_target(slide, plan, rx0, ry0, rx1, ry1)

    batcher = model.batcher
    result = predict_window(read, geometry, (oy0, oy1, ox0, ox1),
                            cast(Predictor, batcher.for_ticket(ticket)),
                            batch_size=min(batcher.max_batch, batcher.max_queue),
                            has_tissue=None)
    return RegionPrediction(
        probabilities=result.probabilities, x0=ox0, y0=oy0, mpp_x=plan.mpp_x, mpp_y=plan.mpp_y,
        slide_mpp=slide_mpp, classes=card.classes, model=card.name, tiles_run=result.tiles_run,
        seconds=time.perf_counter() - started)
