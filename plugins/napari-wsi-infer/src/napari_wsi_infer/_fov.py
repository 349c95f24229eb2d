"""The part of a slide that the napari canvas shows, in slide level-0 pixels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from wsi_infer.rect import Rect


def canvas_size(viewer: Any) -> tuple[int, int]:
    """The canvas ``(height, width)`` in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "size"):
        return tuple(int(v) for v in canvas.size)  # type: ignore[return-value]
    return tuple(int(v) for v in viewer._canvas_size)  # type: ignore[return-value]  # napari < 0.9


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def visible_world_box(viewer: Any) -> tuple[np.ndarray, np.ndarray]:
    """World ``(y, x)`` of the canvas's top-left and bottom-right corners (2-D view)."""
    cam = camera(viewer)
    center = np.asarray(cam.center[-2:], dtype=float)
    half = np.asarray(canvas_size(viewer), dtype=float) / (2 * cam.zoom)
    return center - half, center + half


def visible_region(viewer: Any, slide_layer: Any) -> Rect:
    """Level-0 pixels of ``slide_layer`` inside the canvas.

    The slide layer puts pixel ``i`` at data coordinates ``[i - 0.5, i + 0.5)``; every pixel
    that the canvas shows, even partly, is included.  Raises ``ValueError`` when the canvas
    shows none of the slide.
    """
    top_left, bottom_right = visible_world_box(viewer)
    d0 = np.asarray(slide_layer.world_to_data(top_left))[-2:]
    d1 = np.asarray(slide_layer.world_to_data(bottom_right))[-2:]
    height, width = slide_layer.metadata["wsi_infer"]["size"]
    y0, x0 = (max(0, math.floor(v + 0.5)) for v in d0)
    y1 = min(height, math.ceil(d1[0] + 0.5))
    x1 = min(width, math.ceil(d1[1] + 0.5))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the canvas shows no part of the slide: pan or zoom onto it first")
    return Rect(x0, y0, x1, y1)
