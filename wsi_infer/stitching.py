"""Run the model over the tiles of one chunk and stitch them: crop halos or blend overlaps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .predictor import Predictor
from .tiling import Geometry, blend_window

#: Reads target pixels ``(y0, y1, x0, x1)`` (inside the image) as float32 RGB ``(h, w, 3)``.
RegionReader = Callable[[int, int, int, int], np.ndarray]
#: Whether an output rectangle ``(y0, y1, x0, x1)`` holds tissue.
TissueTest = Callable[[int, int, int, int], bool]


@dataclass(frozen=True)
class ChunkResult:
    """Probabilities of one chunk, ``(classes, h, w)`` float32, and what it cost."""

    probabilities: np.ndarray
    tiles_run: int
    tiles_skipped: int


@dataclass(frozen=True)
class _Tile:
    iy: int
    ix: int
    y0: int  # input window
    x0: int


def predict_chunk(
    read: RegionReader,
    geometry: Geometry,
    cy: int,
    cx: int,
    predictor: Predictor,
    *,
    batch_size: int = 8,
    has_tissue: TissueTest | None = None,
) -> ChunkResult:
    """Predict chunk ``(cy, cx)``: tiles without tissue are skipped and stay 0."""
    return predict_window(read, geometry, geometry.chunk_region(cy, cx), predictor,
                          batch_size=batch_size, has_tissue=has_tissue)


def predict_window(
    read: RegionReader,
    geometry: Geometry,
    region: tuple[int, int, int, int],
    predictor: Predictor,
    *,
    batch_size: int = 8,
    has_tissue: TissueTest | None = None,
) -> ChunkResult:
    """Predict output pixels ``region = (y0, y1, x0, x1)`` from the tiles of the global grid
    that touch it, so any region gets exactly the values a whole-slide run writes there."""
    oy0, oy1, ox0, ox1 = region
    tiles = [
        _Tile(iy, ix, geometry.y.start(iy), geometry.x.start(ix))
        for iy in geometry.tiles_touching(geometry.y, oy0, oy1)
        for ix in geometry.tiles_touching(geometry.x, ox0, ox1)
    ]
    wanted = [t for t in tiles if has_tissue is None or has_tissue(*_tile_footprint(geometry, t))]
    out = np.zeros((predictor.num_classes, oy1 - oy0, ox1 - ox0), np.float32)
    skipped = len(tiles) - len(wanted)
    if not wanted:
        return ChunkResult(out, 0, skipped)
    th, tw = geometry.y.tile, geometry.x.tile
    wy0, wx0 = min(t.y0 for t in wanted), min(t.x0 for t in wanted)
    wy1, wx1 = max(t.y0 for t in wanted) + th, max(t.x0 for t in wanted) + tw
    window = _read_padded(read, geometry, wy0, wy1, wx0, wx1)
    weight = np.zeros((oy1 - oy0, ox1 - ox0), np.float32) if geometry.mode == "blend" else None
    for first in range(0, len(wanted), batch_size):
        batch = wanted[first : first + batch_size]
        pixels = np.stack([window[t.y0 - wy0 : t.y0 - wy0 + th, t.x0 - wx0 : t.x0 - wx0 + tw] for t in batch])
        probabilities = predictor.predict(pixels)
        for tile, prob in zip(batch, probabilities, strict=True):
            if weight is None:
                _crop_into(out, prob, geometry, tile, oy0, ox0)
            else:
                _blend_into(out, weight, prob, geometry, tile, oy0, oy1, ox0, ox1)
    if weight is not None:
        np.divide(out, weight, out=out, where=weight > 0)
    return ChunkResult(out, len(wanted), skipped)


def _tile_footprint(geometry: Geometry, tile: _Tile) -> tuple[int, int, int, int]:
    """Output pixels a tile writes (crop) or covers (blend)."""
    if geometry.mode == "crop":
        return (*geometry.y.owned(tile.iy), *geometry.x.owned(tile.ix))
    return (tile.y0, tile.y0 + geometry.y.tile, tile.x0, tile.x0 + geometry.x.tile)


def _read_padded(read: RegionReader, geometry: Geometry, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read a window, padding beyond the image with white glass, as a whole-image pass pads the
    image to the model's size multiple (and tiny images to one tile)."""
    cy1, cx1 = min(y1, geometry.height), min(x1, geometry.width)
    pixels = read(y0, cy1, x0, cx1)
    if (cy1, cx1) == (y1, x1):
        return pixels
    padded = np.full((y1 - y0, x1 - x0, 3), 255.0, np.float32)
    padded[: cy1 - y0, : cx1 - x0] = pixels
    return padded


def _crop_into(out: np.ndarray, prob: np.ndarray, geometry: Geometry, tile: _Tile, oy0: int, ox0: int) -> None:
    ay, by = geometry.y.owned(tile.iy)
    ax, bx = geometry.x.owned(tile.ix)
    ay, ax = max(ay, oy0), max(ax, ox0)
    by, bx = min(by, oy0 + out.shape[1]), min(bx, ox0 + out.shape[2])
    out[:, ay - oy0 : by - oy0, ax - ox0 : bx - ox0] = prob[:, ay - tile.y0 : by - tile.y0, ax - tile.x0 : bx - tile.x0]


def _blend_into(
    out: np.ndarray, weight: np.ndarray, prob: np.ndarray, geometry: Geometry, tile: _Tile,
    oy0: int, oy1: int, ox0: int, ox1: int,
) -> None:
    th, tw = geometry.y.tile, geometry.x.tile
    ay, by = max(tile.y0, oy0), min(tile.y0 + th, oy1, geometry.height)
    ax, bx = max(tile.x0, ox0), min(tile.x0 + tw, ox1, geometry.width)
    if by <= ay or bx <= ax:
        return
    w = np.outer(blend_window(th, geometry.y.halo), blend_window(tw, geometry.x.halo))
    w = w[ay - tile.y0 : by - tile.y0, ax - tile.x0 : bx - tile.x0]
    p = prob[:, ay - tile.y0 : by - tile.y0, ax - tile.x0 : bx - tile.x0]
    out[:, ay - oy0 : by - oy0, ax - ox0 : bx - ox0] += p * w
    weight[ay - oy0 : by - oy0, ax - ox0 : bx - ox0] += w
