"""Run the model over the tiles of one chunk and stitch them: crop halos or blend overlaps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .predictor import Predictor
from .rect import Rect
from .tiling import Geometry, Tile, blend_window

#: Reads target pixels of a rectangle (inside the image) as float32 RGB ``(h, w, 3)``.
RegionReader = Callable[[Rect], np.ndarray]
#: Whether an output rectangle holds tissue.
TissueTest = Callable[[Rect], bool]


@dataclass(frozen=True)
class ChunkResult:
    """Probabilities of one chunk, ``(classes, h, w)`` float32, and what it cost."""

    probabilities: np.ndarray
    tiles_run: int
    tiles_skipped: int


def predict_window(
    read: RegionReader,
    geometry: Geometry,
    region: Rect,
    predictor: Predictor,
    *,
    batch_size: int = 8,
    has_tissue: TissueTest | None = None,
) -> ChunkResult:
    """Predict the output pixels of ``region`` from the tiles of the global grid that touch
    it, so any region gets exactly the values a whole-slide run writes there; tiles without
    tissue are skipped and stay 0."""
    tiles = geometry.tiles_for(region)
    wanted = [t for t in tiles if has_tissue is None or has_tissue(geometry.footprint(t))]
    out = np.zeros((predictor.num_classes, region.height, region.width), np.float32)
    skipped = len(tiles) - len(wanted)
    if not wanted:
        return ChunkResult(out, 0, skipped)
    windows = [geometry.window(t) for t in wanted]
    span = Rect(min(w.x0 for w in windows), min(w.y0 for w in windows),
                max(w.x1 for w in windows), max(w.y1 for w in windows))
    pixels = _read_padded(read, geometry, span)
    weight = np.zeros((region.height, region.width), np.float32) if geometry.mode == "blend" else None
    for first in range(0, len(wanted), batch_size):
        batch = wanted[first : first + batch_size]
        inputs = np.stack([pixels[geometry.window(t).slices(span)] for t in batch])
        probabilities = predictor.predict(inputs)
        for tile, prob in zip(batch, probabilities, strict=True):
            if weight is None:
                _crop_into(out, prob, geometry, tile, region)
            else:
                _blend_into(out, weight, prob, geometry, tile, region)
    if weight is not None:
        np.divide(out, weight, out=out, where=weight > 0)
    return ChunkResult(out, len(wanted), skipped)


def _read_padded(read: RegionReader, geometry: Geometry, window: Rect) -> np.ndarray:
    """Read a window, padding beyond the image with white glass, as a whole-image pass pads the
    image to the model's size multiple (and tiny images to one tile)."""
    inside = window.clipped(geometry.width, geometry.height)
    pixels = read(inside)
    if inside == window:
        return pixels
    padded = np.full((window.height, window.width, 3), 255.0, np.float32)
    padded[inside.slices(window)] = pixels
    return padded


def _crop_into(out: np.ndarray, prob: np.ndarray, geometry: Geometry, tile: Tile, region: Rect) -> None:
    owned = geometry.footprint(tile)
    part = Rect(max(owned.x0, region.x0), max(owned.y0, region.y0),
                min(owned.x1, region.x1), min(owned.y1, region.y1))
    out[(slice(None), *part.slices(region))] = prob[(slice(None), *part.slices(geometry.window(tile)))]


def _blend_into(out: np.ndarray, weight: np.ndarray, prob: np.ndarray, geometry: Geometry,
                tile: Tile, region: Rect) -> None:
    window = geometry.window(tile)
    part = Rect(max(window.x0, region.x0), max(window.y0, region.y0),
                min(window.x1, region.x1, geometry.width), min(window.y1, region.y1, geometry.height))
    if part.empty:
        return
    inside = part.slices(window)
    w = np.outer(blend_window(geometry.y.tile, geometry.y.halo),
                 blend_window(geometry.x.tile, geometry.x.halo))[inside]
    target = part.slices(region)
    out[(slice(None), *target)] += prob[(slice(None), *inside)] * w
    weight[target] += w
