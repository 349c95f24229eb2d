"""Resampling to the model's mpp: the fast integer path against the sparse reference."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from slides import tissue_image, write_pyramid

from wsi_infer.readers import open_slide
from wsi_infer.rect import Rect
from wsi_infer.resolution import LevelPlan, _sparse_resample, read_target, resample_matrix


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    rgb = tissue_image(700, 900, seed=5)
    rgb[::7] = rng.integers(0, 256, rgb[::7].shape, dtype=np.uint8)  # high frequencies
    return write_pyramid(tmp_path_factory.mktemp("res") / "s.tif", rgb, mpp=0.25, levels=1)


def _reference(slide, plan: LevelPlan, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    sy, wy = resample_matrix(y0, y1, plan.factor_y, plan.level_height)
    sx, wx = resample_matrix(x0, x1, plan.factor_x, plan.level_width)
    src = slide.read_region(plan.level, sx, sy, wx.shape[1], wy.shape[1]).astype(np.float32)
    return _sparse_resample(_sparse_resample(src, 0, wy), 1, wx)


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8, 16])
def test_integer_factors_equal_the_sparse_triangle_filter(slide_path: Path, factor: int) -> None:
    with open_slide(slide_path) as slide:
        w, h = 900 // factor, 700 // factor
        plan = LevelPlan(0, 900, 700, float(factor), float(factor), w, h, 0.25 * factor, 0.25 * factor)
        for x0, y0, x1, y1 in [(0, 0, w, h), (0, 0, 7, 5), (w - 9, h - 4, w, h), (w // 3, h // 4, w // 2, h // 2)]:
            fast = read_target(slide, plan, Rect(x0, y0, x1, y1))
            assert fast.dtype == np.float32 and fast.shape == (y1 - y0, x1 - x0, 3)
            np.testing.assert_allclose(fast, _reference(slide, plan, x0, y0, x1, y1), atol=2e-4)


def test_anisotropic_integer_factors(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        plan = LevelPlan(0, 900, 700, 4.0, 2.0, 225, 350, 1.0, 0.5)
        np.testing.assert_allclose(read_target(slide, plan, Rect(0, 0, 225, 350)),
                                   _reference(slide, plan, 0, 0, 225, 350), atol=2e-4)


@pytest.mark.parametrize("factor", [2.0, 3.0, 2.5])
def test_pieces_equal_the_whole_to_the_bit(slide_path: Path, factor: float) -> None:
    with open_slide(slide_path) as slide:
        w, h = int(900 // factor), int(700 // factor)
        plan = LevelPlan(0, 900, 700, factor, factor, w, h, 0.25 * factor, 0.25 * factor)
        whole = read_target(slide, plan, Rect(0, 0, w, h))
        cuts_x, cuts_y = [0, 17, w // 2, w], [0, 33, h - 5, h]
        for ya, yb in itertools.pairwise(cuts_y):
            for xa, xb in itertools.pairwise(cuts_x):
                np.testing.assert_array_equal(read_target(slide, plan, Rect(xa, ya, xb, yb)), whole[ya:yb, xa:xb])


@pytest.mark.parametrize("factor", [2.0, 4.0, 2.5])
def test_whole_image_read_in_blocks_equals_one_read(slide_path: Path, factor: float,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_infer import resolution

    monkeypatch.setattr(resolution, "WHOLE_READ_SOURCE_BLOCK", 150)  # many blocks on a small slide
    with open_slide(slide_path) as slide:
        w, h = int(900 // factor), int(700 // factor)
        plan = LevelPlan(0, 900, 700, factor, factor, w, h, 0.25 * factor, 0.25 * factor)
        np.testing.assert_array_equal(resolution.read_target_whole(slide, plan),
                                      read_target(slide, plan, Rect(0, 0, w, h)))
