"""Class probabilities on a pixel grid placed on the slide: the input of review and export.

A :class:`ProbabilityMap` is either a whole-slide overlay (read at a level small enough to
hold in memory) or a field-of-view prediction.  Its geometry follows ``docs/output.md``:
pixel ``(r, c)`` has its centre at ``translate + (r, c) × scale`` µm, and the slide layer
puts level-0 pixel ``(i, j)`` at ``(i, j) × slide_mpp``.  QuPath and GeoJSON use corner-based
pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), so a map's pixel edge ``r`` lies at
slide coordinate ``origin + r × factor`` (see :meth:`ProbabilityMap.to_slide_pixels`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import zarr
from wsi_infer.region import RegionPrediction

from ._overlay import OverlayInfo, open_overlay

#: Largest map (pixels per class) read from an overlay for review and export.
MAX_REVIEW_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ProbabilityMap:
    """Probabilities ``(classes, h, w)`` in 0..1 and where their pixels lie on the slide."""

    probabilities: np.ndarray
    classes: tuple[str, ...]
    colors: tuple[str, ...]
    scale: tuple[float, float]  # µm per pixel (y, x)
    translate: tuple[float, float]  # µm, centre of pixel (0, 0) (y, x)
    slide_mpp: tuple[float, float]  # slide level-0 µm per pixel (y, x)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.probabilities.shape[1]), int(self.probabilities.shape[2])

    @property
    def pixel_area_um2(self) -> float:
        return self.scale[0] * self.scale[1]

    @property
    def factor(self) -> tuple[float, float]:
        """Slide level-0 pixels per map pixel ``(y, x)``."""
        return self.scale[0] / self.slide_mpp[0], self.scale[1] / self.slide_mpp[1]

    @property
    def origin(self) -> tuple[float, float]:
        """Slide level-0 corner coordinate ``(y, x)`` of the map's top-left pixel corner."""
        return (
            (self.translate[0] - self.scale[0] / 2) / self.slide_mpp[0] + 0.5,
            (self.translate[1] - self.scale[1] / 2) / self.slide_mpp[1] + 0.5,
        )

    def to_slide_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel-edge coordinates (row, column) → slide level-0 corner coordinates."""
        (oy, ox), (fy, fx) = self.origin, self.factor
        return oy + np.asarray(rows) * fy, ox + np.asarray(cols) * fx

    def from_slide_pixels(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`to_slide_pixels`."""
        (oy, ox), (fy, fx) = self.origin, self.factor
        return (np.asarray(ys) - oy) / fy, (np.asarray(xs) - ox) / fx

    def mask(self, class_index: int, threshold: float) -> np.ndarray:
        """Boolean mask of pixels whose probability of ``class_index`` is above ``threshold``."""
        return np.asarray(self.probabilities[class_index] > threshold)


def from_region(prediction: RegionPrediction) -> ProbabilityMap:
    """The map of a field-of-view prediction (``wsi_infer.region.predict_region``)."""
    mpp = prediction.slide_mpp
    sy, sx = prediction.mpp_y, prediction.mpp_x
    return ProbabilityMap(
        probabilities=np.asarray(prediction.probabilities, dtype=np.float32),
        classes=tuple(c.name for c in prediction.classes),
        colors=tuple(c.color for c in prediction.classes),
        scale=(sy, sx),
        translate=region_translate(prediction),
        slide_mpp=(mpp.y, mpp.x),
    )


def region_translate(prediction: RegionPrediction) -> tuple[float, float]:
    """Pixel-centre translation (µm) of a region: ``(mpp - slide_mpp) / 2 + origin``."""
    oy, ox = prediction.origin_um
    return (
        (prediction.mpp_y - prediction.slide_mpp.y) / 2 + oy,
        (prediction.mpp_x - prediction.slide_mpp.x) / 2 + ox,
    )


def from_overlay(overlay: OverlayInfo | str | os.PathLike[str], *,
                 max_pixels: int = MAX_REVIEW_PIXELS,
                 allow_incomplete: bool = False) -> ProbabilityMap:
    """Read a whole-slide overlay at its finest level of at most ``max_pixels`` per class."""
    info = overlay if isinstance(overlay, OverlayInfo) else open_overlay(
        overlay, allow_incomplete=allow_incomplete)
    level = review_level(info.shape, len(info.level_paths), max_pixels)
    if not info.complete and level > 0:
        raise ValueError(f"{info.path}: the run has not finished; its level 0 is too large to "
                         "review before the pyramid is written")
    values = np.asarray(zarr.open_array(str(info.path / info.level_paths[level]), mode="r")[...])
    probabilities = values.astype(np.float32) / np.float32(info.value_max)
    k = 2**level
    scale = (info.scale[0] * k, info.scale[1] * k)
    translate = (info.translate[0] + info.scale[0] * (k - 1) / 2,
                 info.translate[1] + info.scale[1] * (k - 1) / 2)
    return ProbabilityMap(probabilities, info.classes, info.colors, scale, translate,
                          info.slide_mpp)


def review_level(shape: tuple[int, int], levels: int, max_pixels: int) -> int:
    """The finest of ``levels`` 2× pyramid levels of a ``shape`` image with ≤ ``max_pixels``
    (the coarsest if none is that small)."""
    for level in range(levels):
        if math.ceil(shape[0] / 2**level) * math.ceil(shape[1] / 2**level) <= max_pixels:
            return level
    return levels - 1


def class_areas_mm2(pmap: ProbabilityMap, threshold: float) -> dict[str, float]:
    """Area (mm²) above ``threshold`` of each class, and of any class (``"any class"``)."""
    pixel_mm2 = pmap.pixel_area_um2 / 1e6
    masks = pmap.probabilities > threshold
    areas = {name: float(masks[i].sum()) * pixel_mm2 for i, name in enumerate(pmap.classes)}
    areas["any class"] = float(masks.any(axis=0).sum()) * pixel_mm2
    return areas
