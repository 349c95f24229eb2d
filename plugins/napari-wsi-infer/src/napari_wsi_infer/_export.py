"""Export a reviewed overlay: GeoJSON polygons for QuPath, and a PNG thumbnail.

Polygons follow the pixel edges of the thresholded mask exactly: each run of mask pixels in a
row is a box, and shapely unions the boxes into polygons with their holes.  Coordinates are
slide level-0 pixels with corner-based pixel coordinates (pixel ``(0, 0)`` spans
``[0, 1) × [0, 1)``), which is what QuPath's GeoJSON import expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import mapping
from shapely.geometry.polygon import orient
from wsi_infer.readers import open_slide

from ._layers import hex_to_rgb
from ._probmap import ProbabilityMap

THUMBNAIL_SIZE = 1024


def mask_polygons(mask: np.ndarray) -> list[shapely.Polygon]:
    """Polygons (with holes) covering the ``True`` pixels of a 2-D mask, in pixel-edge
    coordinates ``(x = column, y = row)``."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    union = shapely.union_all(shapely.box(starts, rows, ends, rows + 1))
    union = shapely.simplify(union, 0.0)  # drop the collinear vertices left by the boxes
    parts = union.geoms if hasattr(union, "geoms") else [union]
    return [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty]


def geojson_features(pmap: ProbabilityMap, threshold: float,
                     classes: list[int] | None = None) -> list[dict[str, Any]]:
    """QuPath annotation features for each class's pixels above ``threshold``."""
    (oy, ox), (fy, fx) = pmap.origin, pmap.factor

    def to_slide(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([ox + xy[:, 0] * fx, oy + xy[:, 1] * fy])

    features = []
    for index in classes if classes is not None else range(len(pmap.classes)):
        classification = {"name": pmap.classes[index],
                          "color": list(hex_to_rgb(pmap.colors[index]))}
        for polygon in mask_polygons(pmap.mask(index, threshold)):
            geometry = orient(shapely.transform(polygon, to_slide), sign=1.0)
            features.append({
                "type": "Feature",
                "geometry": mapping(geometry),
                "properties": {"objectType": "annotation", "classification": classification,
                               "isLocked": False},
            })
    return features


def write_geojson(path: str | os.PathLike[str], pmap: ProbabilityMap, threshold: float,
                  classes: list[int] | None = None) -> int:
    """Write a GeoJSON FeatureCollection of the thresholded map; returns the feature count."""
    features = geojson_features(pmap, threshold, classes)
    collection = {"type": "FeatureCollection", "features": features}
    Path(path).write_text(json.dumps(collection, separators=(",", ":")))
    return len(features)


def slide_thumbnail(slide_path: str | os.PathLike[str],
                    max_side: int = THUMBNAIL_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB thumbnail of the whole slide (longest side ``max_side``) and the slide's level-0
    ``(height, width)``."""
    with open_slide(slide_path) as slide:
        width, height = slide.dimensions
        ratio = max(width, height) / max_side
        size = (max(1, round(width / ratio)), max(1, round(height / ratio)))
        level = max((i for i, d in enumerate(slide.level_downsamples) if d <= max(ratio, 1.0)),
                    default=0)
        lw, lh = slide.level_dimensions[level]
        pixels = slide.read_region(level, 0, 0, lw, lh)
    thumbnail = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
    return thumbnail, (height, width)


def blend(thumbnail: np.ndarray, slide_size: tuple[int, int], pmap: ProbabilityMap,
          opacity: float = 0.5) -> np.ndarray:
    """Blend the class probabilities onto a slide thumbnail of a ``(height, width)`` slide:
    each class adds its colour with alpha ``opacity × probability``."""
    th, tw = thumbnail.shape[:2]
    ys = (np.arange(th) + 0.5) * slide_size[0] / th
    xs = (np.arange(tw) + 0.5) * slide_size[1] / tw
    rows, cols = pmap.from_slide_pixels(ys, xs)
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    h, w = pmap.shape
    inside = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out = thumbnail.astype(np.float32)
    sub = np.ix_(np.nonzero(inside[0])[0], np.nonzero(inside[1])[0])
    for index, color in enumerate(pmap.colors):
        p = pmap.probabilities[index][np.ix_(rows[inside[0]], cols[inside[1]])]
        alpha = (opacity * np.clip(p, 0, 1))[..., None]
        out[sub] = out[sub] * (1 - alpha) + np.array(hex_to_rgb(color), np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_thumbnail(path: str | os.PathLike[str], slide_path: str | os.PathLike[str],
                    pmap: ProbabilityMap, max_side: int = THUMBNAIL_SIZE,
                    opacity: float = 0.5) -> tuple[int, int]:
    """Write a PNG of the slide with the map blended on; returns its ``(height, width)``."""
    thumbnail, slide_size = slide_thumbnail(slide_path, max_side)
    image = blend(thumbnail, slide_size, pmap, opacity)
    Image.fromarray(image).save(path, optimize=True)
    return image.shape[0], image.shape[1]
