"""Lazy, downsample-consistent pyramids for napari.

napari draws level ``k`` of a multiscale layer with the level-0 scale times
``level_shapes[0] / level_shapes[k]``.  Real pyramids rarely divide evenly (an SVS level of a
46,001 px wide slide is 11,500 px wide: napari would stretch it by 4.00009), so both pyramids
here are padded: level 0 grows to a multiple of the coarsest integer downsample and every
level ``k`` is exactly ``level 0 / factor_k`` (missing pixels read as glass for slides, as 0 for
overlays).  Then napari's per-level factors are exact integers (4, 16... for Aperio; 2, 4, 8
for the overlays) and every level lands on the same pixels as level 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
from wsi_infer.readers import SlideReader

#: Pixels per side of the dask blocks read from a slide (one ``read_region`` each).
SLIDE_BLOCK = 1024
#: A level whose downsample is within this relative distance of an integer uses that integer.
DOWNSAMPLE_TOLERANCE = 0.02


def integer_levels(downsamples: Sequence[float]) -> list[tuple[int, int]]:
    """``(level, integer factor)`` of the levels usable in an exact pyramid.

    Level 0 is always kept; a further level is kept when its downsample is close to an integer
    larger than the previous kept one (levels with fractional downsamples are dropped: napari
    would draw them slightly off).
    """
    kept = [(0, 1)]
    for level, downsample in enumerate(downsamples[1:], start=1):
        factor = round(downsample)
        if factor > kept[-1][1] and abs(downsample / factor - 1) <= DOWNSAMPLE_TOLERANCE:
            kept.append((level, factor))
    return kept


def padded_size(length: int, factors: Sequence[int]) -> int:
    """``length`` rounded up to a multiple of every factor."""
    step = math.lcm(*factors)
    return -(-length // step) * step


def slide_pyramid(slide: SlideReader, name: str, block: int = SLIDE_BLOCK) -> list[da.Array]:
    """One lazy ``(h, w, 3)`` uint8 dask array per usable level of ``slide``.

    Each dask block is one ``slide.read_region(level, x, y, w, h)`` in that level's pixels;
    nothing is read until napari asks for the pixels it shows.  ``name`` must identify the
    slide (it becomes the dask key prefix, which napari's chunk cache uses).
    """
    levels = integer_levels(slide.level_downsamples)
    factors = [f for _, f in levels]
    width, height = slide.dimensions
    full_w, full_h = padded_size(width, factors), padded_size(height, factors)
    return [
        _level_array(slide, level, full_h // factor, full_w // factor, f"{name}-{level}", block)
        for level, factor in levels
    ]


def _level_array(slide: SlideReader, level: int, height: int, width: int, name: str,
                 block: int) -> da.Array:
    def read(block_info: dict | None = None) -> np.ndarray:  # type: ignore[type-arg]
        assert block_info is not None
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        return slide.read_region(level, x0, y0, x1 - x0, y1 - y0)

    chunks = da.core.normalize_chunks((block, block, 3), (height, width, 3))
    return da.map_blocks(read, chunks=chunks, dtype=np.uint8, name=name,
                         meta=np.empty((0, 0, 0), np.uint8))


def pad_to(array: da.Array, height: int, width: int) -> da.Array:
    """Pad the last two axes of ``array`` with zeros up to ``height × width``."""
    pad_h, pad_w = height - array.shape[-2], width - array.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {array.shape} down to {height}×{width}")
    if pad_h == 0 and pad_w == 0:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    return da.pad(array, widths, mode="constant", constant_values=0)


def halving_pyramid(levels: Sequence[da.Array]) -> list[da.Array]:
    """Pad a 2×-per-level pyramid (sizes rounded up, as wsi-infer writes it) so that level
    ``k`` is exactly level 0 / ``2**k``."""
    factors = [2**k for k in range(len(levels))]
    full_h = padded_size(levels[0].shape[-2], factors)
    full_w = padded_size(levels[0].shape[-1], factors)
    return [pad_to(a, full_h // f, full_w // f) for a, f in zip(levels, factors, strict=True)]
