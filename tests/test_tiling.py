from __future__ import annotations

import itertools

import numpy as np
import pytest

from wsi_infer.resolution import resample_matrix
from wsi_infer.tiling import AxisTiles, blend_window


@pytest.mark.parametrize("length,stride,halo", [(1000, 96, 8), (97, 96, 8), (50, 96, 8), (4096, 512, 15)])
def test_crop_tiles_partition_the_axis_and_keep_their_halo(length: int, stride: int, halo: int) -> None:
    tile = min(stride + 2 * halo, length)
    axis = AxisTiles(length, tile, stride, halo)
    owned = [axis.owned(i) for i in range(axis.count)]
    assert owned[0][0] == 0 and owned[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(owned))  # no gap, no overlap
    for i, (a, b) in enumerate(owned):
        start = axis.start(i)
        assert 0 <= start and start + tile <= length  # windows stay inside the image
        assert a - start >= halo or start == 0  # context on the left, or the image edge
        assert start + tile - b >= halo or start + tile == length


def test_blend_window_is_smooth_positive_and_symmetric() -> None:
    w = blend_window(64, 8)
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w, w[::-1])
    assert (np.diff(w[:16]) > 0).all()


@pytest.mark.parametrize("factor", [1.0, 2.0, 2.5, 4.008, 0.4])
def test_resampling_weights_are_normalised_and_piecewise_exact(factor: float) -> None:
    src = 1000
    n = int(src / factor)
    s0, whole = resample_matrix(0, n, factor, src)
    np.testing.assert_allclose(np.asarray(whole.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    signal = np.random.default_rng(0).random(src).astype(np.float32)
    full = whole @ signal[s0 : s0 + whole.shape[1]]
    parts = []
    for a in range(0, n, 37):
        p0, part = resample_matrix(a, min(a + 37, n), factor, src)
        parts.append(part @ signal[p0 : p0 + part.shape[1]])
    np.testing.assert_array_equal(np.concatenate(parts), full)


def test_downsampling_by_two_is_antialiased() -> None:
    s0, w = resample_matrix(0, 50, 2.0, 100)
    stripes = np.tile([0.0, 1.0], 50).astype(np.float32)  # Nyquist pattern must not alias
    out = w @ stripes[s0:]
    np.testing.assert_allclose(out[1:-1], 0.5, atol=1e-6)
