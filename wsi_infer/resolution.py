"""Pick the pyramid level for a model's mpp and resample regions to it.

Resampling is defined in *global* coordinates: target pixel ``t`` is centred on level pixel
``(t + 0.5) * factor - 0.5`` and is a triangle-weighted (antialiased bilinear) average over a
support of ``max(factor, 1)`` level pixels on each side, with edge pixels replicated.  So a
region read piecewise equals the same region read whole, to the last bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from .readers import Mpp, SlideReader
from .rect import Rect

#: Bumped whenever a change to the resampling changes any pixel (it is part of the run key).
RESAMPLING_VERSION = 2

#: A level whose mpp is within this relative distance of the target is used as is.
MPP_TOLERANCE = 0.02


@dataclass(frozen=True)
class LevelPlan:
    """How to read a slide at a target resolution."""

    level: int
    level_width: int
    level_height: int
    factor_x: float  # level pixels per target pixel
    factor_y: float
    width: int  # target image size
    height: int
    mpp_x: float  # actual mpp of the target image
    mpp_y: float

    @property
    def resampled(self) -> bool:
        return self.factor_x != 1.0 or self.factor_y != 1.0


def plan_level(slide: SlideReader, mpp: Mpp, target_mpp: float) -> LevelPlan:
    """Choose the coarsest level at or finer than ``target_mpp`` and the resampling factors.

    A level within :data:`MPP_TOLERANCE` of the target is read without resampling.  A slide
    coarser than the target is upsampled from level 0.
    """
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise ValueError(f"target mpp must be positive, got {target_mpp!r}")
    level = 0
    for i, downsample in enumerate(slide.level_downsamples):
        level_mpp = math.sqrt(mpp.x * mpp.y) * downsample
        if level_mpp <= target_mpp * (1 + MPP_TOLERANCE):
            level = i
    downsample = slide.level_downsamples[level]
    level_w, level_h = slide.level_dimensions[level]
    fx = _snap(target_mpp / (mpp.x * downsample))
    fy = _snap(target_mpp / (mpp.y * downsample))
    width, height = max(1, round(level_w / fx)), max(1, round(level_h / fy))
    return LevelPlan(
        level=level,
        level_width=level_w,
        level_height=level_h,
        factor_x=fx,
        factor_y=fy,
        width=width,
        height=height,
        mpp_x=mpp.x * downsample * fx,
        mpp_y=mpp.y * downsample * fy,
    )


def _snap(factor: float) -> float:
    return 1.0 if abs(factor - 1.0) <= MPP_TOLERANCE else factor


@lru_cache(maxsize=256)
def resample_matrix(start: int, stop: int, factor: float, src_len: int) -> tuple[int, sp.csr_matrix]:
    """Weights mapping level pixels ``[src0, src0 + n)`` to target pixels ``[start, stop)``.

    Returns ``(src0, W)`` with ``W`` of shape ``(stop - start, n)``; rows sum to 1.
    """
    radius = max(factor, 1.0)
    t = np.arange(start, stop, dtype=np.float64)
    centres = (t + 0.5) * factor - 0.5
    lo = np.floor(centres - radius).astype(np.int64) + 1
    taps = math.ceil(2 * radius) + 1
    j = lo[:, None] + np.arange(taps)[None, :]
    w = np.clip(1.0 - np.abs(j - centres[:, None]) / radius, 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    j = np.clip(j, 0, src_len - 1)
    src0, src1 = int(j.min()), int(j.max()) + 1
    rows = np.repeat(np.arange(stop - start), taps)
    matrix = sp.csr_matrix(
        (w.ravel().astype(np.float32), (rows, (j - src0).ravel())),
        shape=(stop - start, src1 - src0),
    )
    matrix.sum_duplicates()
    return src0, matrix


#: Integer factors up to this use exact integer arithmetic (the sums fit in uint32 below it).
MAX_INTEGER_FACTOR = 16


def read_target(slide: SlideReader, plan: LevelPlan, rect: Rect) -> np.ndarray:
    """Read the target-resolution pixels of ``rect`` as ``float32`` RGB ``(h, w, 3)`` in 0..255."""
    x0, y0, x1, y1 = rect.x0, rect.y0, rect.x1, rect.y1
    if not plan.resampled:
        return slide.read_region(plan.level, x0, y0, x1 - x0, y1 - y0).astype(np.float32)
    if all(f == int(f) and f <= MAX_INTEGER_FACTOR for f in (plan.factor_x, plan.factor_y)):
        return _integer_read(slide, plan, x0, y0, x1, y1)
    sy, wy = resample_matrix(y0, y1, plan.factor_y, plan.level_height)
    sx, wx = resample_matrix(x0, x1, plan.factor_x, plan.level_width)
    src = slide.read_region(plan.level, sx, sy, wx.shape[1], wy.shape[1])
    rows = _sparse_resample(src.astype(np.float32), 0, wy)
    return _sparse_resample(rows, 1, wx)


def _sparse_resample(src: np.ndarray, axis: int, matrix: sp.csr_matrix) -> np.ndarray:
    """Apply a resampling matrix along ``axis``."""
    moved = np.moveaxis(src, axis, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return np.moveaxis(out.reshape(matrix.shape[0], *moved.shape[1:]), 0, axis).astype(np.float32, copy=False)


def _integer_weights(factor: int) -> np.ndarray:
    """The triangle weights of an integer factor, as small integers."""
    if factor % 2 == 0:  # taps at distances 0.5, 1.5 ... factor - 0.5 from the centre
        half = np.arange(1, 2 * factor, 2)
        return np.concatenate([half, half[::-1]])
    half = np.arange(1, factor + 1)  # taps at distances factor - 1 ... 1, 0
    return np.concatenate([half, half[-2::-1]])


@dataclass(frozen=True)
class _IntegerAxis:
    """Target pixels ``[start, stop)`` of one axis at an integer factor: output ``t`` is the
    weighted sum of source pixels ``first + factor * (t - start) + k`` for tap ``k``."""

    start: int
    stop: int
    factor: int
    src_len: int

    @property
    def weights(self) -> np.ndarray:
        return _integer_weights(self.factor)

    @property
    def first(self) -> int:  # output t is centred on source (t + 0.5) * factor - 0.5
        return round((self.start + 0.5) * self.factor - 0.5 - (self.weights.size - 1) / 2)

    @property
    def last(self) -> int:  # one past the last source pixel used
        return self.first + self.factor * (self.stop - self.start - 1) + self.weights.size

    def source_window(self) -> tuple[int, int]:
        """The source pixels to read, clipped to the level."""
        return max(0, self.first), min(self.src_len, self.last)


def _integer_read(slide: SlideReader, plan: LevelPlan, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Integer factors (the usual 2× and 4× between pyramid levels and model mpps) give every
    output pixel the same integer weights: strided sums in exact integer arithmetic on planar
    (channel-first) pixels, several times faster than a sparse product, in uint16 where the
    sums fit."""
    ay = _IntegerAxis(y0, y1, int(plan.factor_y), plan.level_height)
    ax = _IntegerAxis(x0, x1, int(plan.factor_x), plan.level_width)
    (sy0, sy1), (sx0, sx1) = ay.source_window(), ax.source_window()
    src = slide.read_region(plan.level, sx0, sy0, sx1 - sx0, sy1 - sy0)
    planar = np.ascontiguousarray(np.moveaxis(src, 2, 0))  # (3, h, w): long strided inner loops
    total_y, total_x = int(ay.weights.sum()), int(ax.weights.sum())
    rows = _integer_pass(planar, 1, ay, sy0, _sum_dtype(255 * total_y))
    both = _integer_pass(rows, 2, ax, sx0, _sum_dtype(255 * total_y * total_x))
    out = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    np.multiply(np.moveaxis(both, 0, 2), np.float32(1.0 / (total_y * total_x)), out=out, dtype=np.float32)
    return out


def _sum_dtype(largest: int) -> type[np.unsignedinteger]:
    return np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32


def _integer_pass(src: np.ndarray, axis: int, spec: _IntegerAxis, src0: int,
                  dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Weighted strided sums of ``src`` (whose ``axis`` starts at level pixel ``src0``)."""
    weights = spec.weights
    n, factor, taps = spec.stop - spec.start, spec.factor, weights.size
    if 0 <= spec.first and spec.last <= spec.src_len:
        window = [slice(None)] * src.ndim
        window[axis] = slice(spec.first - src0, spec.last - src0)
        gathered = src[tuple(window)]  # a view: no copy inside the slide
    else:  # at the slide border, replicate the edge pixels
        index = np.clip(np.arange(spec.first, spec.last), 0, spec.src_len - 1) - src0
        gathered = np.take(src, index, axis=axis)

    def tap(k: int) -> np.ndarray:
        taken = [slice(None)] * src.ndim
        taken[axis] = slice(k, k + factor * (n - 1) + 1, factor)
        return gathered[tuple(taken)]  # type: ignore[no-any-return]

    out: np.ndarray | None = None
    pair: np.ndarray | None = None
    for k in range((taps + 1) // 2):  # the weights are symmetric: add taps k and taps-1-k first
        mirror = taps - 1 - k
        if mirror != k:
            pair = np.add(tap(k), tap(mirror), out=pair, dtype=dtype)
        else:
            pair = np.add(tap(k), 0, out=pair, dtype=dtype)
        if weights[k] != 1:
            pair *= dtype(weights[k])
        if out is None:
            out, pair = pair, None
        else:
            out += pair
    assert out is not None
    return out


#: Source pixels per side of one block when a whole (small) target image is read.
WHOLE_READ_SOURCE_BLOCK = 4096


def read_target_whole(slide: SlideReader, plan: LevelPlan) -> np.ndarray:
    """The whole target image (a thumbnail), read block by block so the memory it takes is the
    result plus one block of the level, even when the slide has no level close to the target
    (a single-level 100,000² TIFF read at 8 µm/px).  Equal to one ``read_target`` of it all."""
    out = np.empty((plan.height, plan.width, 3), np.float32)
    step_y = max(64, math.ceil(WHOLE_READ_SOURCE_BLOCK / plan.factor_y))
    step_x = max(64, math.ceil(WHOLE_READ_SOURCE_BLOCK / plan.factor_x))
    for y0 in range(0, plan.height, step_y):
        y1 = min(plan.height, y0 + step_y)
        for x0 in range(0, plan.width, step_x):
            x1 = min(plan.width, x0 + step_x)
            out[y0:y1, x0:x1] = read_target(slide, plan, Rect(x0, y0, x1, y1))
    return out
