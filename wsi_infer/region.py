"""Predict one region of a slide (a viewer's field of view, a service request).

The region uses the same level, tiles and halo as a whole-slide run with the same options, so
its values equal what ``wsi-infer SLIDE`` writes at those pixels.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import RegionError
from .models import ClassInfo, resolve_model
from .pipeline import RunOptions, _cached_predictor, _cached_slide, plan_slide
from .readers import Mpp
from .resolution import LevelPlan, read_target
from .stitching import predict_window
from .tissue import TissueMask, detect_tissue


@dataclass(frozen=True)
class RegionPrediction:
    """Probabilities ``(classes, h, w)`` of output pixels ``[y0, y0+h) × [x0, x0+w)``."""

    probabilities: np.ndarray
    x0: int
    y0: int
    mpp_x: float
    mpp_y: float
    slide_mpp: Mpp
    classes: tuple[ClassInfo, ...]
    model: str
    tiles_run: int
    seconds: float

    @property
    def origin_um(self) -> tuple[float, float]:
        """Top-left corner ``(y, x)`` of the first pixel on the slide, in µm."""
        return self.y0 * self.mpp_y, self.x0 * self.mpp_x


def predict_region(slide_path: str | os.PathLike[str], x: int, y: int, width: int, height: int,
                   options: RunOptions | None = None) -> RegionPrediction:
    """Predict the level-0 region ``(x, y, width, height)`` of a slide."""
    options = options or RunOptions()
    started = time.perf_counter()
    card = resolve_model(options.model, options.bare_model)
    slide = _cached_slide(str(slide_path), options.reader)
    mpp, plan, geometry = plan_slide(slide, card, mpp=options.mpp, tile_size=options.tile_size,
                                     halo=options.halo, chunk_size=options.chunk_size)
    ox0, oy0, ox1, oy1 = output_rectangle(plan, mpp, x, y, width, height)
    predictor = _cached_predictor(card, options.backend, options.device,
                                  options.threads, options.fp16)
    tissue = _cached_tissue(str(slide_path), options.reader, mpp) if options.tissue_mask else None

    def read(ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        return read_target(slide, plan, rx0, ry0, rx1, ry1)

    def has_tissue(ty0: int, ty1: int, tx0: int, tx1: int) -> bool:
        assert tissue is not None
        return tissue.any_in(tx0 * plan.mpp_x, ty0 * plan.mpp_y, tx1 * plan.mpp_x, ty1 * plan.mpp_y)

    result = predict_window(read, geometry, (oy0, oy1, ox0, ox1), predictor,
                            batch_size=predictor.batch_size(options.batch_size),
                            has_tissue=has_tissue if tissue is not None else None)
    return RegionPrediction(result.probabilities, ox0, oy0, plan.mpp_x, plan.mpp_y, mpp,
                            card.classes, card.name, result.tiles_run, time.perf_counter() - started)


def output_rectangle(plan: LevelPlan, mpp: Mpp, x: int, y: int, width: int,
                     height: int) -> tuple[int, int, int, int]:
    """Output pixels ``(x0, y0, x1, y1)`` covering a level-0 rectangle, clipped to the image."""
    x0 = max(0, math.floor(x * mpp.x / plan.mpp_x))
    y0 = max(0, math.floor(y * mpp.y / plan.mpp_y))
    x1 = min(plan.width, math.ceil((x + width) * mpp.x / plan.mpp_x))
    y1 = min(plan.height, math.ceil((y + height) * mpp.y / plan.mpp_y))
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"region x={x} y={y} {width}x{height} lies outside the slide")
    return x0, y0, x1, y1


@lru_cache(maxsize=16)
def _cached_tissue(path: str, reader: str, mpp: Mpp) -> TissueMask:
    return detect_tissue(_cached_slide(path, reader), mpp)  # type: ignore[arg-type]


