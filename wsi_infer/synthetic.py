"""Realistic synthetic whole-slide images for demos, tests and benchmarks.

The content looks like an H&E stained section: a few irregular pieces of tissue on near-white
glass, pink eosin stroma with fibrous texture and holes, and purple hematoxylin nuclei
(6-10 µm ellipses, crowded in "cellular" islands, sparse elsewhere).  Every pixel is a pure
function of its global coordinates, the slide size and the seed, so :func:`render_region`
returns exactly the same pixels for a region whether it is rendered whole or piecewise:

* smooth fields (tissue outline, stroma density, fibres, holes) are hashed value noise,
  evaluated every :data:`COARSE_STEP` pixels and upsampled bilinearly;
* nuclei come from two jittered grids of cells, with at most one nucleus per cell whose
  presence, size, shape and orientation are hashed from the cell index;
* pixel grain comes from a seeded periodic table indexed by global coordinates;
* a pixel's colour is looked up in a palette indexed by quantised eosin density,
  hematoxylin density and grain.

:func:`make_slide` writes an Aperio SVS (OpenSlide vendor ``aperio``), a generic pyramidal
TIFF or an OME-TIFF with JPEG tiles, one row of tiles at a time.  Reduced levels are area
averages of the level above; they are spooled, uncompressed, to temporary files next to the
output until their turn to be written comes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import tifffile
from numpy.typing import NDArray

__all__ = ["make_slide", "render_region", "tissue_truth"]

Kind = Literal["svs", "tiff", "ome-tiff"]
Background = Literal["glass", "black"]
Image = NDArray[np.uint8]
Field = NDArray[np.float32]
Coords = NDArray[np.floating[Any]]
_Sink = Callable[[Image], None]

#: Smooth fields are evaluated every this many pixels and upsampled bilinearly.
COARSE_STEP = 4
#: Range of nucleus semi-major axes (µm): nuclei are 6-10 µm across.
NUCLEUS_RADIUS_UM = (3.0, 5.0)
#: Share of the slide width (height) that is black scanner padding on the right (bottom)
#: edge when ``background="black"``.
BLACK_BAND = 0.05
#: Tissue keeps this share of the slide size away from its edges (as long as the tissue
#: fraction is below about 0.65, beyond which it has to spread into the margin).
TISSUE_MARGIN = 0.07
#: Longest side of the SVS thumbnail page (pixels, at most).
THUMBNAIL_SIZE = 768
#: mpp used for the content of slides written with ``mpp=None``.
DEFAULT_CONTENT_MPP = 0.25

# Nucleus grids: (cell side in µm, offset of the grid in cells, hash salt).  Two grids of
# different pitch keep the nuclei from lining up.
_NUCLEUS_GRIDS = ((11.0, 0.0, 100), (13.0, 0.5, 200))
# Render blocks of at most this many rows x columns (bounds temporaries, stays in cache).
_BLOCK = (256, 2048)
# Palette resolution: eosin levels x hematoxylin levels x grain levels.
_NE, _NH, _NG = 96, 32, 8
_GLASS = np.array([239.0, 238.0, 242.0])
_EOSIN = np.array([206.0, 96.0, 158.0])
_HEMATOXYLIN = np.array([72.0, 42.0, 124.0])
# Period of the grain table (rows, columns); primes, so tiles never line up with it.
_GRAIN_PERIOD = (499, 509)
_APERIO_HEADER = "Aperio Image Library v12.0.15 \n"
# Bytes of tiles tifffile collects before compressing them on its thread pool.
_ENCODE_BUFFER = 64 << 20


# --------------------------------------------------------------------------- noise


def _hash_uniform(seed: int, salt: int, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> Field:
    """Uniform [0, 1) values hashed from integer lattice coordinates, shape (rows, cols)."""
    key = np.uint32((seed * 0x9E3779B1 + salt * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF)
    h = rows.astype(np.uint32)[:, None] * np.uint32(0x8DA6B343)
    h = h ^ (cols.astype(np.uint32)[None, :] * np.uint32(0xD8163841)) ^ key
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):  # murmur3 finaliser
        h ^= h >> np.uint32(shift)
        h *= np.uint32(mult)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _lattice(coords: Coords, cell: float) -> tuple[NDArray[np.int64], Field]:
    """Lattice index left of each coordinate and the smoothstep weight of its right neighbour."""
    u = coords / cell
    i0 = np.floor(u)
    t = (u - i0).astype(np.float32)
    return i0.astype(np.int64), t * t * (np.float32(3.0) - np.float32(2.0) * t)


def _value_noise(
    xs: Coords, ys: Coords, cell: float | tuple[float, float], seed: int, salt: int
) -> Field:
    """Smooth noise in [0, 1] on the grid ``ys`` x ``xs`` (pixel coordinates).

    ``cell`` is the lattice spacing in pixels, or ``(cell_x, cell_y)`` for anisotropic noise.
    Every value depends only on its own coordinates, never on the extent of the grid.
    """
    cell_x, cell_y = cell if isinstance(cell, tuple) else (cell, cell)
    i0, tx = _lattice(xs, cell_x)
    j0, ty = _lattice(ys, cell_y)
    imin, jmin = int(i0.min()), int(j0.min())
    values = _hash_uniform(
        seed, salt, np.arange(jmin, int(j0.max()) + 2), np.arange(imin, int(i0.max()) + 2)
    )
    left, right = values[:, i0 - imin], values[:, i0 - imin + 1]
    rows = left + (right - left) * tx
    top, bottom = rows[j0 - jmin], rows[j0 - jmin + 1]
    return top + (bottom - top) * ty[:, None]


def _smoothstep(x: Field, lo: float, hi: float) -> Field:
    t: Field = np.clip((x - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


def _rng(seed: int, salt: int) -> np.random.Generator:
    """A random generator for per-slide constants (any int seed, negative ones included)."""
    return np.random.default_rng([seed % 2**64, salt])


# --------------------------------------------------------------------------- tissue layout


@lru_cache(maxsize=64)
def _sections(seed: int) -> tuple[tuple[float, float, float, float], ...]:
    """Centre and radii (cx, cy, rx, ry, as shares of the slide size) of 1-3 tissue sections,
    side by side like serial sections on a slide."""
    rng = _rng(seed, 0x5EC7)
    count = int(rng.integers(1, 4))
    return tuple(
        (
            0.1 + 0.8 * (i + 0.5) / count + rng.uniform(-0.04, 0.04),
            0.5 + rng.uniform(-0.1, 0.1),
            0.4 / count * rng.uniform(0.65, 0.9),
            rng.uniform(0.22, 0.34),
        )
        for i in range(count)
    )


def _tissue_field(xs: Coords, ys: Coords, width: int, height: int, seed: int) -> Field:
    """Low-frequency field whose top quantile is tissue; depends on the slide size, not mpp.

    Elliptic cones (one per section) plus noise octaves scaled to the slide make a few
    irregular sections; a fine octave (fixed in pixels) roughens their outline; a steep
    rounded-rectangle falloff keeps them TISSUE_MARGIN away from the edges of the slide.
    """
    scale = max(width, height)
    amps = (1.0, 0.5, 0.25, 0.12, 0.05)
    cells = (scale / 4, scale / 8, scale / 16, scale / 32, 150.0)
    noise = np.zeros((ys.size, xs.size), np.float32)
    for k, (amp, cell) in enumerate(zip(amps, cells, strict=True)):
        noise += np.float32(amp) * _value_noise(xs, ys, cell, seed, 10 + k)
    field = (noise - np.float32(0.5 * sum(amps))) * np.float32(2.2 / sum(amps))
    u, v = xs / width, ys / height
    cones = np.full(field.shape, -1.0, np.float32)
    for cx, cy, rx, ry in _sections(seed):
        dx, dy = (u - cx) / rx, (v - cy) / ry
        cone = 1.0 - np.sqrt((dx * dx)[None, :] + (dy * dy)[:, None])
        np.maximum(cones, cone.astype(np.float32), out=cones)
    field += cones
    # superellipse |2u - 1|^4 + |2v - 1|^4 = radius^4: 0 in the centre, 1 on the edges
    eu, ev = (2.0 * u - 1.0) * (2.0 * u - 1.0), (2.0 * v - 1.0) * (2.0 * v - 1.0)
    radius = np.sqrt(np.sqrt((eu * eu)[None, :] + (ev * ev)[:, None])).astype(np.float32)
    field -= np.float32(3.0) * _smoothstep(radius, 0.8, 1.0 - 2.0 * TISSUE_MARGIN)
    return field


@lru_cache(maxsize=64)
def _tissue_threshold(width: int, height: int, seed: int, fraction: float) -> float:
    """Field value above which a share ``fraction`` of the slide is tissue."""
    n = 256
    xs = (np.arange(n) + 0.5) * (width / n)
    ys = (np.arange(n) + 0.5) * (height / n)
    field = _tissue_field(xs, ys, width, height, seed)
    if fraction <= 0.0:
        return float(field.max()) + 1.0
    return float(np.quantile(field, 1.0 - min(fraction, 1.0)))


def tissue_truth(
    slide_width: int,
    slide_height: int,
    *,
    shape: tuple[int, int],
    seed: int = 0,
    tissue_fraction: float = 0.4,
) -> NDArray[np.bool_]:
    """Where a synthetic slide has tissue, as a boolean mask of ``shape`` (rows, cols).

    Mask pixel (i, j) covers ``slide_height / rows`` x ``slide_width / cols`` slide pixels and
    is True when the slide has tissue at its centre.  The layout does not depend on mpp, and
    tissue stays clear of the black padding of ``background="black"`` unless
    ``tissue_fraction`` is above about 0.65.
    """
    rows, cols = shape
    if rows <= 0 or cols <= 0 or slide_width <= 0 or slide_height <= 0:
        raise ValueError(f"sizes must be positive, got {slide_width}x{slide_height}, {shape}")
    xs = (np.arange(cols) + 0.5) * (slide_width / cols)
    ys = (np.arange(rows) + 0.5) * (slide_height / rows)
    field = _tissue_field(xs, ys, slide_width, slide_height, seed)
    threshold = _tissue_threshold(slide_width, slide_height, seed, tissue_fraction)
    return np.asarray(field > np.float32(threshold))


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Content:
    """Everything the pixels of a synthetic slide depend on."""

    width: int
    height: int
    seed: int
    fraction: float
    mpp: float

    def tissue(self, xs: Coords, ys: Coords) -> Field:
        """Soft tissue mask in [0, 1] on a grid; 0.5 on the outline of :func:`tissue_truth`."""
        field = _tissue_field(xs, ys, self.width, self.height, self.seed)
        threshold = _tissue_threshold(self.width, self.height, self.seed, self.fraction)
        mask: Field = np.clip((field - np.float32(threshold)) * np.float32(300.0) + 0.5, 0, 1)
        return mask

    def noise(
        self, xs: Coords, ys: Coords, cell_um: float | tuple[float, float], salt: int
    ) -> Field:
        """Value noise with a lattice spacing given in micrometres."""
        cell = (
            (cell_um[0] / self.mpp, cell_um[1] / self.mpp)
            if isinstance(cell_um, tuple)
            else cell_um / self.mpp
        )
        return _value_noise(xs, ys, cell, self.seed, salt)

    def holes(self, xs: Coords, ys: Coords) -> Field:
        """Empty spaces inside the tissue (lumens, fat, tears): 1 inside a hole, else 0."""
        noise = 0.7 * self.noise(xs, ys, 90.0, 34) + 0.3 * self.noise(xs, ys, 25.0, 35)
        return _smoothstep(noise, 0.68, 0.74)


@lru_cache(maxsize=8)
def _grain_table(seed: int) -> NDArray[np.int32]:
    """Periodic table of grain levels (0.._NG-1), roughly Gaussian around the middle."""
    rng = _rng(seed, 0x5EED)
    levels = np.rint(rng.normal((_NG - 1) / 2, 1.4, _GRAIN_PERIOD))
    return np.clip(levels, 0, _NG - 1).astype(np.int32)


@lru_cache(maxsize=1)
def _palette() -> NDArray[np.uint32]:
    """RGB0 bytes, viewed as one uint32, for every (eosin, hematoxylin, grain) index."""
    e = np.linspace(0.0, 1.0, _NE)[:, None, None, None]
    h = np.linspace(0.0, 1.0, _NH)[None, :, None, None]
    g = (np.arange(_NG) - (_NG - 1) / 2)[None, None, :, None]
    stroma = _GLASS + e * (_EOSIN - _GLASS)
    rgb = stroma + h * (_HEMATOXYLIN - stroma) + g * (1.0 + 3.0 * e + 5.0 * h)
    rgbx = np.zeros((_NE * _NH * _NG, 4), np.uint8)
    rgbx[:, :3] = np.clip(np.rint(rgb), 0, 255).reshape(-1, 3)
    return rgbx.view(np.uint32)[:, 0]


def _aligned(start: int, size: int, step: int) -> tuple[int, int]:
    """The smallest range [start', start' + size') aligned to ``step`` covering the input."""
    lo = (start // step) * step
    return lo, -(-(start + size) // step) * step - lo


def _eosin(content: _Content, x: int, y: int, cols: int, rows: int) -> NDArray[np.int32]:
    """Quantised eosin density (0.._NE-1) of pixels [y, y+rows) x [x, x+cols)."""
    s = COARSE_STEP
    ax, acols = _aligned(x, cols, s)
    ay, arows = _aligned(y, rows, s)
    xs = np.arange(ax // s, (ax + acols) // s + 1, dtype=np.float64) * s
    ys = np.arange(ay // s, (ay + arows) // s + 1, dtype=np.float64) * s

    texture = content.noise(xs, ys, 40.0, 30)
    # fibres run horizontally in some regions and vertically in others
    along = content.noise(xs, ys, (12.0, 2.5), 31)
    across = content.noise(xs, ys, (2.5, 12.0), 32)
    direction = _smoothstep(content.noise(xs, ys, 200.0, 33), 0.35, 0.65)
    fibres = across + (along - across) * direction
    density = np.clip(0.3 + 0.55 * texture + 0.3 * (fibres - 0.5), 0.12, 1.0)
    coarse = content.tissue(xs, ys) * density * (1.0 - 0.9 * content.holes(xs, ys))
    coarse = coarse * np.float32(_NE - 1) + np.float32(0.5)  # + 0.5: truncation rounds

    full = _upsample(coarse, s)
    return full[y - ay : y - ay + rows, x - ax : x - ax + cols].astype(np.int32)


def _upsample(coarse: Field, step: int) -> Field:
    """Bilinear interpolation of (m + 1, n + 1) samples to (m * step, n * step) pixels.

    Written as one assignment per phase, which numpy runs several times faster than the
    equivalent broadcast over a short axis of length ``step``.
    """
    weights = [np.float32(phase / step) for phase in range(step)]
    left = coarse[:, :-1]
    slope = coarse[:, 1:] - left
    rows = np.empty((*left.shape, step), np.float32)
    for phase, weight in enumerate(weights):
        np.multiply(slope, weight, out=rows[:, :, phase])
        rows[:, :, phase] += left
    along_x = rows.reshape(coarse.shape[0], -1)
    top = along_x[:-1]
    slope = along_x[1:] - top
    out = np.empty((top.shape[0], step, top.shape[1]), np.float32)
    for phase, weight in enumerate(weights):
        np.multiply(slope, weight, out=out[:, phase])
        out[:, phase] += top
    return out.reshape(-1, top.shape[1])


def _nuclei(
    content: _Content, x: int, y: int, cols: int, rows: int, grid: tuple[float, float, int]
) -> Field:
    """Hematoxylin level (0.._NH-1, fractional) of one nucleus grid over the given pixels.

    The grid's cells are ``cell`` pixels wide; each holds at most one elliptical nucleus,
    jittered so that it stays inside its cell.  Working on a cell-aligned region lets every
    per-cell parameter broadcast over an (rows/cell, cell, cols/cell, cell) view.
    """
    cell_um, offset, salt = grid
    c = max(3, round(cell_um / content.mpp))
    shift = round(offset * c)
    ax, acols = _aligned(x - shift, cols, c)
    ay, arows = _aligned(y - shift, rows, c)
    nx, ny = acols // c, arows // c
    ix, iy = np.arange(ax // c, ax // c + nx), np.arange(ay // c, ay // c + ny)
    centres_x, centres_y = (ix + 0.5) * c + shift, (iy + 0.5) * c + shift

    def rand(k: int) -> Field:
        return _hash_uniform(content.seed, salt + k, iy, ix)

    # which cells hold a nucleus: only in tissue outside holes, crowded in cellular islands
    islands = 0.7 * content.noise(centres_x, centres_y, 400.0, 40)
    islands += 0.3 * content.noise(centres_x, centres_y, 60.0, 41)
    odds = content.tissue(centres_x, centres_y) * (1.0 - content.holes(centres_x, centres_y))
    present = rand(0) < odds * (0.06 + 0.5 * _smoothstep(islands, 0.45, 0.6))

    # ellipse with semi-axes a >= b, jittered to stay inside the cell; the orientation comes
    # from a rational parametrisation (no trigonometry: exact and identical everywhere)
    lo, hi = NUCLEUS_RADIUS_UM
    a = (lo + (hi - lo) * rand(1)) / np.float32(content.mpp)
    b = a * (0.6 + 0.35 * rand(2))
    t = 2.0 * rand(3) - 1.0
    cos, sin = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    room = np.maximum(c / 2 - a - 1.0, 0.0)
    off_x = c / 2 + (2.0 * rand(4) - 1.0) * room
    off_y = c / 2 + (2.0 * rand(5) - 1.0) * room

    # level = sharp * (1 - q) with q = (u/a)² + (v/b)² = (A dx² + B dx dy + C dy²) / sharp,
    # then clipped to the cell's plateau (-1 where there is no nucleus) and to 0 outside
    sharp = np.float32(2.5 * (_NH - 1))  # reaches the plateau at about 75% of the radius
    ia, ib = 1.0 / (a * a), 1.0 / (b * b)
    qa = (sharp * (cos * cos * ia + sin * sin * ib))[:, None, :, None]
    qb = (sharp * 2.0 * cos * sin * (ia - ib))[:, None, :, None]
    qc = (sharp * (sin * sin * ia + cos * cos * ib))[:, None, :, None]
    plateau = np.where(present, (_NH - 1) * (0.7 + 0.3 * rand(6)), -1.0).astype(np.float32)

    local = np.arange(c, dtype=np.float32)
    dx = local[None, None, None, :] - off_x[:, None, :, None]  # (ny, 1, nx, c)
    dy = local[None, :, None, None] - off_y[:, None, :, None]  # (ny, c, nx, 1)
    level = (-qb * dx) * dy  # (ny, c, nx, c)
    level += sharp - qa * dx * dx
    level -= qc * dy * dy
    np.minimum(level, plateau[:, None, :, None], out=level)
    np.maximum(level, 0.0, out=level)
    top, left = y - shift - ay, x - shift - ax
    region: Field = level.reshape(arows, acols)[top : top + rows, left : left + cols]
    return region


def _grain(seed: int, x: int, y: int, cols: int, rows: int) -> NDArray[np.int32]:
    """Grain level (0.._NG-1) of pixels [y, y+rows) x [x, x+cols): the periodic table."""
    table = _grain_table(seed)
    period_y, period_x = table.shape
    band = table.take(np.arange(y, y + rows) % period_y, axis=0)
    start = x % period_x
    return np.tile(band, (1, -(-(start + cols) // period_x)))[:, start : start + cols]


def _render_block(content: _Content, x: int, y: int, out: Image) -> None:
    """Render the pixels at [y, y + rows) x [x, x + cols) into ``out`` (rows, cols, 3)."""
    rows, cols = out.shape[:2]
    hematoxylin = np.maximum(
        *(_nuclei(content, x, y, cols, rows, grid) for grid in _NUCLEUS_GRIDS)
    ).astype(np.int32)
    index = _eosin(content, x, y, cols, rows)
    index *= np.int32(_NH * _NG)
    hematoxylin *= np.int32(_NG)
    index += hematoxylin
    index += _grain(content.seed, x, y, cols, rows)
    rgbx = _palette().take(index).view(np.uint8).reshape(rows, cols, 4)
    for channel in range(3):  # much faster than copying the (rows, cols, 3) view at once
        out[:, :, channel] = rgbx[:, :, channel]


def _scanned_extent(width: int, height: int) -> tuple[int, int]:
    """Width and height of the scanned area; the rest is black with ``background="black"``."""
    return width - round(BLACK_BAND * width), height - round(BLACK_BAND * height)


def render_region(
    x: int,
    y: int,
    width: int,
    height: int,
    *,
    slide_width: int,
    slide_height: int,
    seed: int = 0,
    tissue_fraction: float = 0.4,
    mpp: float = 0.25,
    background: Background = "glass",
) -> Image:
    """Render the level-0 pixels [y, y + height) x [x, x + width) of a synthetic slide.

    Returns a (height, width, 3) uint8 RGB array.  The pixels depend only on their global
    coordinates, the slide size, ``seed``, ``tissue_fraction`` and ``mpp`` (which sets the
    physical scale of nuclei and texture), so rendering a region piecewise gives exactly the
    same pixels as rendering it whole.  Regions may extend beyond the slide.  With
    ``background="black"`` everything right of / below the scanned area (the last
    :data:`BLACK_BAND` of the slide width / height) is (0, 0, 0).
    """
    if width < 0 or height < 0:
        raise ValueError(f"region size must not be negative, got {width}x{height}")
    if slide_width <= 0 or slide_height <= 0:
        raise ValueError(f"slide size must be positive, got {slide_width}x{slide_height}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp!r}")
    if background not in ("glass", "black"):
        raise ValueError(f"background must be 'glass' or 'black', got {background!r}")
    content = _Content(slide_width, slide_height, seed, float(tissue_fraction), float(mpp))
    out = np.empty((height, width, 3), np.uint8)
    _render_into(content, background, x, y, out)
    return out


def _render_into(
    content: _Content,
    background: Background,
    x: int,
    y: int,
    out: Image,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Render the pixels at [y, y + rows) x [x, x + cols) into ``out`` (rows, cols, 3),
    block by block, on ``pool`` if given (numpy releases the GIL for the heavy lifting)."""
    height, width = out.shape[:2]
    block_rows, block_cols = _BLOCK
    corners = [
        (bx, by) for by in range(0, height, block_rows) for bx in range(0, width, block_cols)
    ]

    def render(corner: tuple[int, int]) -> None:
        bx, by = corner
        _render_block(content, x + bx, y + by, out[by : by + block_rows, bx : bx + block_cols])

    for _ in pool.map(render, corners) if pool else map(render, corners):
        pass
    if background == "black":
        scan_w, scan_h = _scanned_extent(content.width, content.height)
        out[:, max(0, min(width, scan_w - x)) :] = 0
        out[max(0, min(height, scan_h - y)) :] = 0


# --------------------------------------------------------------------------- pyramid


def _block_mean(image: Image, factor: int) -> Image:
    """Area-average ``image`` by ``factor`` in both directions, dropping partial blocks.

    Sums rows as whole slices, then columns one channel at a time: numpy is an order of
    magnitude slower at reductions or copies whose innermost axis is the 3 channels.
    """
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    dtype = np.uint16 if factor * factor * 255 < 2**16 else np.uint32
    image = image[: rows * factor, : cols * factor]
    row_sums: NDArray[np.unsignedinteger[Any]] = image[0::factor].astype(dtype)
    for i in range(1, factor):
        row_sums += image[i::factor]
    blocks = row_sums.reshape(rows, cols, factor, 3)
    sums: NDArray[np.unsignedinteger[Any]] = np.empty((rows, cols, 3), dtype)
    for channel in range(3):
        out = sums[:, :, channel]
        np.copyto(out, blocks[:, :, 0, channel])
        for j in range(1, factor):
            out += blocks[:, :, j, channel]
    sums += dtype(factor * factor // 2)
    sums //= dtype(factor * factor)
    return sums.astype(np.uint8)


class _Reducer:
    """Area-averages a stream of image rows by an integer factor into an image of known size.

    Holds back fewer than ``factor`` input rows between calls.
    """

    def __init__(self, factor: int, size: tuple[int, int]) -> None:
        self.factor = factor
        self.width, self.rows_left = size
        self._pending: Image | None = None

    def push(self, rows: Image) -> Image:
        """Take the next rows of the input; return the output rows they complete."""
        rows = rows[:, : self.width * self.factor]
        if self._pending is not None:
            rows = np.concatenate([self._pending, rows])
        n = min(rows.shape[0] // self.factor, self.rows_left)
        self.rows_left -= n
        rest = rows[n * self.factor :] if self.rows_left else rows[:0]
        self._pending = rest.copy() if rest.shape[0] else None
        return _block_mean(rows[: n * self.factor], self.factor)


class _Spool:
    """An uncompressed level in a temporary file: appended row by row, read back in bands."""

    def __init__(self, directory: Path, width: int, height: int) -> None:
        self.width, self.height = width, height
        # owned by the spool, closed by bands() or close()
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory, prefix=".synthetic-")  # noqa: SIM115

    def append(self, rows: Image) -> None:
        self._file.write(np.ascontiguousarray(rows).data)

    def bands(self, rows: int) -> Iterator[Image]:
        """The level in bands of ``rows`` rows (the last may be shorter); closes the file."""
        self._file.seek(0)
        try:
            for y in range(0, self.height, rows):
                band = np.empty((min(rows, self.height - y), self.width, 3), np.uint8)
                if self._file.readinto(band.data) != band.nbytes:  # type: ignore[attr-defined]
                    raise OSError("temporary pyramid file is truncated")
                yield band
        finally:
            self._file.close()

    def close(self) -> None:
        self._file.close()


def _level_sizes(width: int, height: int, factor: int, min_size: int) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels: divide by ``factor`` until the longest side < min_size."""
    sizes = [(width, height)]
    while max(sizes[-1]) >= min_size and min(sizes[-1]) >= factor:
        w, h = sizes[-1]
        sizes.append((w // factor, h // factor))
    return sizes


def _tiles(band: Image, tile: int) -> Iterator[Image]:
    """The tiles of a band of at most ``tile`` rows; edge tiles are padded by repeating the
    last row / column (zero padding would make JPEG ring into the real pixels)."""
    for x in range(0, band.shape[1], tile):
        piece = band[:, x : x + tile]
        pad_rows, pad_cols = tile - piece.shape[0], tile - piece.shape[1]
        if pad_rows or pad_cols:
            piece = np.pad(piece, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
        yield piece


def _level_tiles(bands: Iterator[Image], tile: int, sinks: list[_Sink]) -> Iterator[Image]:
    """The tiles of a level given as bands of ``tile`` rows, feeding each band to ``sinks``."""
    for band in bands:
        for sink in sinks:
            sink(band)
        yield from _tiles(band, tile)
        del band  # before the next band is made: only about one band in memory at a time


def _rendered_bands(content: _Content, background: Background, rows: int) -> Iterator[Image]:
    """Level 0 of a slide in bands of ``rows`` rows, each rendered by a pool of threads."""
    with ThreadPoolExecutor(_render_threads()) as pool:
        for y in range(0, content.height, rows):
            band = np.empty((min(rows, content.height - y), content.width, 3), np.uint8)
            _render_into(content, background, 0, y, band, pool)
            yield band
            del band


def _render_threads() -> int:
    """Threads used to render a slide: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _reduce_into(reducer: _Reducer, sink: _Sink) -> _Sink:
    """A sink that area-averages the rows it gets and passes the result to ``sink``."""
    return lambda rows: sink(reducer.push(rows))


def _fan_out(sinks: list[_Sink]) -> _Sink:
    """A sink that passes the rows it gets to each of ``sinks``."""

    def feed(rows: Image) -> None:
        for sink in sinks:
            sink(rows)

    return feed


def _level0_sinks(
    kind: Kind, factor: int, sizes: list[tuple[int, int]], spools: list[_Spool]
) -> tuple[list[_Sink], list[Image]]:
    """Where the bands of level 0 go besides the file: reduced into the level-1 spool and,
    for svs, into the thumbnail (reduced from level 1 when there is one: narrower, cheaper).

    Returns the sinks and the list that collects the rows of the thumbnail.
    """
    thumbnail: list[Image] = []
    level0: list[_Sink] = []
    level1: list[_Sink] = [spools[0].append] if spools else []
    if kind == "svs":
        source = sizes[1] if spools else sizes[0]
        step = max(1, min(-(-max(source) // THUMBNAIL_SIZE), *source))
        reducer = _Reducer(step, (source[0] // step, source[1] // step))
        (level1 if spools else level0).append(_reduce_into(reducer, thumbnail.append))
    if spools:
        level0.append(_reduce_into(_Reducer(factor, sizes[1]), _fan_out(level1)))
    return level0, thumbnail


@dataclass(frozen=True)
class _Layout:
    """How the pages of a synthetic slide are written: tifffile.write arguments per page."""

    kind: Kind
    sizes: list[tuple[int, int]]
    tile: int
    quality: int
    mpp: float | None

    def _jpeg(self) -> dict[str, Any]:
        return {
            "photometric": "rgb",
            "compression": "jpeg",
            "compressionargs": {"level": self.quality},
            "metadata": None,
        }

    def options(self, level: int) -> dict[str, Any]:
        """Arguments for the tiled page of pyramid level ``level``."""
        (width, height), (w, h) = self.sizes[0], self.sizes[level]
        opts = {
            **self._jpeg(),
            "shape": (h, w, 3),
            "dtype": np.uint8,
            "tile": (self.tile, self.tile),
            "buffersize": _ENCODE_BUFFER,
        }
        if self.kind == "svs":
            opts["description"] = self._aperio_description(w, h)
            return opts
        if self.mpp is not None:
            opts["resolution"] = (1e4 / self.mpp * w / width, 1e4 / self.mpp * h / height)
            opts["resolutionunit"] = "CENTIMETER"
        if level:
            opts["subfiletype"] = 1
            return opts
        opts["subifds"] = len(self.sizes) - 1
        if self.kind == "ome-tiff":
            metadata: dict[str, Any] = {"axes": "YXS"}
            if self.mpp is not None:
                metadata |= {
                    "PhysicalSizeX": self.mpp,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": self.mpp,
                    "PhysicalSizeYUnit": "µm",
                }
            opts["metadata"] = metadata
        return opts

    def thumbnail_options(self, image: Image) -> dict[str, Any]:
        """Arguments for the stripped thumbnail page of an SVS."""
        return {**self._jpeg(), "description": self._aperio_description(*image.shape[1::-1])}

    def _aperio_description(self, w: int, h: int) -> str:
        """Aperio ImageDescription of the baseline page, or of a page reduced to w x h."""
        width, height = self.sizes[0]
        mpp = f"|MPP = {self.mpp}" if self.mpp is not None else ""
        if (w, h) == (width, height):
            return (
                f"{_APERIO_HEADER}{w}x{h} [0,0 {w}x{h}] ({self.tile}x{self.tile}) "
                f"JPEG Q={self.quality}|AppMag = 40{mpp}|Filename = synthetic"
                "|ScanScope ID = SYNTHETIC"
            )
        return f"{_APERIO_HEADER}{width}x{height} -> {w}x{h} - |AppMag = 40{mpp}"


def _validate(
    width: int,
    height: int,
    mpp: float | None,
    kind: str,
    tile: int,
    quality: int,
    min_level_size: int,
    background: str,
) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive or None, got {mpp!r}")
    if kind not in ("svs", "tiff", "ome-tiff"):
        raise ValueError(f"kind must be 'svs', 'tiff' or 'ome-tiff', got {kind!r}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (JPEG MCU), got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {quality}")
    if min_level_size < 1:
        raise ValueError(f"min_level_size must be positive, got {min_level_size}")
    if background not in ("glass", "black"):
        raise ValueError(f"background must be 'glass' or 'black', got {background!r}")


def make_slide(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    mpp: float | None = 0.25,
    kind: Kind = "svs",
    tile: int = 256,
    jpeg_quality: int = 85,
    tissue_fraction: float = 0.4,
    seed: int = 0,
    min_level_size: int = 512,
    background: Background = "glass",
) -> Path:
    """Write a synthetic pyramidal whole-slide image with JPEG tiles and return its path.

    Level 0 is :func:`render_region` of the whole slide; each further level is the area
    average of the one above, reduced by 4 (``svs``, like Aperio) or 2 (``tiff``,
    ``ome-tiff``) until its longest side is below ``min_level_size``.  Memory use is a few
    rows of tiles of level 0 whatever the slide size; reduced levels wait in uncompressed
    temporary files in the output directory (about 1/15 of the raw level-0 size for svs,
    1/3 otherwise).

    * ``svs``: Aperio layout (level 0, a stripped thumbnail of at most 768 px, then the
      reduced levels, all in the main IFD chain) with Aperio ImageDescriptions carrying
      ``MPP``; OpenSlide opens it as vendor ``aperio``.
    * ``tiff``: generic tiled TIFF, reduced levels as SubIFDs, mpp in X/YResolution with
      ResolutionUnit CENTIMETER, no ImageDescription.
    * ``ome-tiff``: OME-TIFF (axes YXS) with ``PhysicalSizeX/Y`` in µm (and the resolution
      tags), reduced levels as SubIFDs.

    JPEG tiles are stored as YCbCr with 2x2 chroma subsampling (tifffile's default for RGB
    input), which OpenSlide, libtiff and tifffile all decode to the original RGB.  With
    ``mpp=None`` no physical pixel size is written (tifffile still writes its placeholder
    X/YResolution of 1 with ResolutionUnit NONE) and the content is drawn at
    :data:`DEFAULT_CONTENT_MPP`.
    """
    _validate(width, height, mpp, kind, tile, jpeg_quality, min_level_size, background)
    path = Path(path)
    factor = 4 if kind == "svs" else 2
    sizes = _level_sizes(width, height, factor, min_level_size)
    content = _Content(width, height, seed, float(tissue_fraction), mpp or DEFAULT_CONTENT_MPP)
    layout = _Layout(kind, sizes, tile, jpeg_quality, mpp)
    spools = [_Spool(path.parent, w, h) for w, h in sizes[1:]]
    try:
        raw_bytes = sum(w * h * 3 for w, h in sizes)
        with tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**31, ome=kind == "ome-tiff") as tif:
            sinks, thumbnail = _level0_sinks(kind, factor, sizes, spools)
            bands = _rendered_bands(content, background, tile)
            tif.write(_level_tiles(bands, tile, sinks), **layout.options(0))
            if kind == "svs":
                image = np.concatenate(thumbnail)
                tif.write(image, **layout.thumbnail_options(image))
            for level, spool in enumerate(spools, start=1):
                sinks = []
                if level < len(spools):
                    reducer = _Reducer(factor, sizes[level + 1])
                    sinks.append(_reduce_into(reducer, spools[level].append))
                tif.write(_level_tiles(spool.bands(tile), tile, sinks), **layout.options(level))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        for spool in spools:
            spool.close()
    return path
