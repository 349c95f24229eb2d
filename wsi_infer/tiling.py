"""Where the model's tiles and the processing chunks lie on the target-resolution image.

Tiles lie on one global grid that depends only on the image size, never on the chunk, so a
pixel is always computed from the same tiles: tiled output equals a whole-image run.

* ``crop`` (fully convolutional models): tile ``i`` owns output ``[i*stride, (i+1)*stride)``
  and sees ``halo`` extra pixels of context on each side.  Every window starts at a multiple
  of the model's size multiple (its total pooling stride), so the pooling grid of every tile
  is the grid of one whole-image pass; at the image border windows are shifted inward, and
  the last one ends where a whole-image pass ends: at the image size rounded up to the size
  multiple, the remainder padded with glass white as that pass pads it.
* ``blend`` (fixed input size): tiles overlap by ``2*halo`` and are blended with smooth weights.

A processing chunk is ``chunk_tiles × chunk_tiles`` tiles; it is the unit Dask schedules and
the output's zarr chunk, so chunks never write to the same zarr chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .models import ModelCard
from .rect import Rect

Mode = Literal["crop", "blend"]


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis of an image of ``length`` pixels."""

    length: int
    tile: int  # input window size (may exceed length: the excess is padded)
    stride: int  # output pixels owned by each tile
    halo: int
    align: int = 1  # window starts are multiples of this (the model's size multiple)

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.length / self.stride))

    @property
    def padded_length(self) -> int:
        """Where a whole-image pass ends: ``length`` rounded up to ``align``."""
        return _round_up(self.length, self.align)

    def start(self, i: int) -> int:
        """Input window start of tile ``i`` (shifted inward at the image border, by a multiple
        of ``align`` when ``tile`` and ``stride`` are multiples of it)."""
        return int(min(max(i * self.stride - self.halo, 0), max(self.padded_length - self.tile, 0)))

    def owned(self, i: int) -> tuple[int, int]:
        """Output pixels ``[a, b)`` that tile ``i`` writes in crop mode."""
        return i * self.stride, min((i + 1) * self.stride, self.length)


@dataclass(frozen=True)
class Tile:
    """Tile ``(iy, ix)`` of the grid and the top-left corner of its input window."""

    iy: int
    ix: int
    y0: int
    x0: int


@dataclass(frozen=True)
class Geometry:
    """Tiles and chunks over a ``height × width`` target image."""

    y: AxisTiles
    x: AxisTiles
    mode: Mode
    chunk_tiles: int

    @property
    def height(self) -> int:
        return self.y.length

    @property
    def width(self) -> int:
        return self.x.length

    @property
    def chunk(self) -> int:
        """Chunk size in output pixels (also the zarr chunk of level 0)."""
        return self.y.stride * self.chunk_tiles

    @property
    def chunk_grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk)

    def chunks(self) -> Iterator[tuple[int, int]]:
        rows, cols = self.chunk_grid
        for cy in range(rows):
            for cx in range(cols):
                yield cy, cx

    def chunk_region(self, cy: int, cx: int) -> Rect:
        """Output pixels of chunk ``(cy, cx)``."""
        c = self.chunk
        return Rect(cx * c, cy * c, min((cx + 1) * c, self.width), min((cy + 1) * c, self.height))

    def tiles_in_chunk(self, cy: int, cx: int) -> int:
        """Tiles of the grid that chunk ``(cy, cx)`` owns (in blend mode, neighbours' tiles
        also touch it)."""
        rows = range(cy * self.chunk_tiles, min((cy + 1) * self.chunk_tiles, self.y.count))
        cols = range(cx * self.chunk_tiles, min((cx + 1) * self.chunk_tiles, self.x.count))
        return len(rows) * len(cols)

    def tiles_for(self, region: Rect) -> list[Tile]:
        """The tiles of the global grid that contribute to the output pixels of ``region``."""
        return [Tile(iy, ix, self.y.start(iy), self.x.start(ix))
                for iy in self.tiles_touching(self.y, region.y0, region.y1)
                for ix in self.tiles_touching(self.x, region.x0, region.x1)]

    def window(self, tile: Tile) -> Rect:
        """The input pixels tile ``tile`` sees (may reach past the image: padded)."""
        return Rect.of_size(tile.x0, tile.y0, self.x.tile, self.y.tile)

    def footprint(self, tile: Tile) -> Rect:
        """The output pixels a tile writes (crop) or covers (blend)."""
        if self.mode == "crop":
            (y0, y1), (x0, x1) = self.y.owned(tile.iy), self.x.owned(tile.ix)
            return Rect(x0, y0, x1, y1)
        return self.window(tile)

    def reach(self, region: Rect) -> Rect:
        """``region`` and a halo around it: blended tiles reach that far beyond their chunk
        (crop mode keeps the same margin)."""
        return region.grown(self.y.halo)

    def tiles_touching(self, axis: AxisTiles, a: int, b: int) -> range:
        """Tiles along ``axis`` that contribute to output pixels ``[a, b)``."""
        if self.mode == "crop":
            return range(a // axis.stride, min(axis.count, (b - 1) // axis.stride + 1))
        first, last = a // axis.stride, (b - 1) // axis.stride
        hits = [i for i in range(max(0, first - 2), min(axis.count, last + 3))
                if axis.start(i) < b and axis.start(i) + axis.tile > a]
        return range(hits[0], hits[-1] + 1)

    @property
    def tiles_total(self) -> int:
        return self.y.count * self.x.count


def geometry_for(
    card: ModelCard,
    height: int,
    width: int,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    chunk_size: int = 2048,
) -> Geometry:
    """Tiles and chunks for ``card`` on a ``height × width`` image.

    Fully convolutional models own ``tile_size`` output pixels per tile and see ``halo``
    (default: the card's receptive margin) more on each side.  Fixed-size models see their
    fixed size and overlap by ``2 * halo`` (default: an eighth of the tile).
    """
    multiple = card.input.size_multiple
    if card.input.size is not None:
        tile_h, tile_w = card.input.size
        if tile_h != tile_w:
            raise ValueError("non-square fixed input sizes are not supported yet")
        halo = halo if halo is not None else max(card.receptive_margin // 2, tile_h // 8)
        stride = tile_h - 2 * halo
        if stride <= 0:
            raise ValueError(f"halo {halo} leaves no output in a {tile_h}px tile")
        axes = [AxisTiles(n, tile_h, stride, halo) for n in (height, width)]
        mode: Mode = "blend"
    else:
        halo = card.receptive_margin if halo is None else halo
        halo = _round_up(halo, multiple)
        stride = _round_up(tile_size or card.input.tile_size, multiple)
        tile = stride + 2 * halo
        axes = [AxisTiles(n, min(tile, _round_up(n, multiple)), stride, halo, multiple)
                for n in (height, width)]
        mode = "crop"
    chunk_tiles = max(1, round(chunk_size / stride))
    return Geometry(y=axes[0], x=axes[1], mode=mode, chunk_tiles=chunk_tiles)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def blend_window(tile: int, halo: int) -> np.ndarray:
    """1-D blending weights: a raised-cosine ramp over ``2*halo`` pixels at each end, clamped
    above zero so every covered pixel has weight."""
    weights = np.ones(tile, np.float32)
    ramp = 2 * halo
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        rise = 0.5 - 0.5 * np.cos(np.pi * t)
        weights[:ramp] = rise
        weights[-ramp:] = np.minimum(weights[-ramp:], rise[::-1])
    return np.maximum(weights, 1e-3)
