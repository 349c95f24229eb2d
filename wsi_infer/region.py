"""Predict one region of a slide (a viewer's field of view, a service request).

The region is planned as a whole-slide run with the same options is (:func:`~wsi_infer.plan.
plan_run`), so its values equal what ``wsi-infer SLIDE`` writes at those pixels.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from .models import ClassInfo, resolve_model
from .plan import RunOptions, plan_run
from .readers import Mpp
from .rect import Rect
from .resources import Resources
from .stitching import predict_window


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


def predict_region(slide_path: str | os.PathLike[str], region: Rect, options: RunOptions, *,
                   resources: Resources) -> RegionPrediction:
    """Predict the level-0 rectangle ``region`` of a slide, with the slides, models and tissue
    masks of ``resources`` (loaded on first use, kept for the next region)."""
    started = time.perf_counter()
    card = resolve_model(options.model, options.bare_model)
    slide = resources.slide(slide_path, options.reader)
    plan = plan_run(slide, card, options, fingerprint=resources.fingerprint(slide_path))
    if options.tissue_mask:
        plan = plan.with_tissue(resources.tissue(slide_path, options.reader, plan.mpp))
    rect = plan.output_rect(region)
    predictor = resources.predictor(card, options.backend, options.device, options.threads,
                                    options.fp16)
    result = predict_window(partial(plan.read, slide), plan.geometry, rect, predictor,
                            batch_size=predictor.batch_size(options.batch_size),
                            has_tissue=plan.has_tissue if plan.tissue is not None else None)
    return RegionPrediction(result.probabilities, rect.x0, rect.y0, plan.level.mpp_x,
                            plan.level.mpp_y, plan.mpp, card.classes, card.name, result.tiles_run,
                            time.perf_counter() - started)
