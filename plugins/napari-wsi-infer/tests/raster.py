"""Draw GeoJSON polygons back onto a mask, and compare masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.draw import polygon as draw_polygon

ToPixels = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def rasterize(features: list[dict], to_pixels: ToPixels, shape: tuple[int, int]) -> np.ndarray:
    """Draw GeoJSON polygons (holes cut out) back onto a mask; ``to_pixels(xy) -> (rows, cols)``
    in pixel-edge coordinates."""
    out = np.zeros(shape, bool)
    for feature in features:
        rings = feature["geometry"]["coordinates"]
        piece = np.zeros(shape, bool)
        for k, ring in enumerate(rings):
            rows, cols = to_pixels(np.asarray(ring, float))
            # pixel (r, c) spans [r, r+1) in edge coordinates; skimage fills by pixel centre
            rr, cc = draw_polygon(rows - 0.5, cols - 0.5, shape)
            piece[rr, cc] = k == 0
        out |= piece
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
