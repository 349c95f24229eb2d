"""npe2 readers: whole-slide images and wsi-infer OME-Zarr overlays.

Each ``get_*_reader(path)`` returns a reader callable when it can read ``path`` and ``None``
otherwise, so napari can try other plugins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from wsi_infer.errors import SlideError
from wsi_infer.readers import open_slide

from ._layers import LayerData, overlay_layer_data, slide_layer_data
from ._overlay import is_overlay, open_overlay

PathOrPaths = str | os.PathLike[str] | list[str] | list[os.PathLike[str]]
ReaderFunction = Callable[[PathOrPaths], list[LayerData]]


def get_slide_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for slides that ``wsi_infer.readers.open_slide`` opens, else ``None``."""
    paths = _paths(path)
    if paths is None or not all(_is_slide(p) for p in paths):
        return None
    return read_slides


def read_slides(path: PathOrPaths) -> list[LayerData]:
    """One lazy multiscale RGB layer per slide."""
    return [slide_layer_data(p) for p in _paths(path) or []]


def get_overlay_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for wsi-infer overlays (a folder whose ``.zattrs`` has ``multiscales`` and
    ``wsi_infer``), else ``None``."""
    paths = _paths(path)
    if paths is None or not all(is_overlay(p) for p in paths):
        return None
    return read_overlays


def read_overlays(path: PathOrPaths) -> list[LayerData]:
    """One layer per class of each overlay; refuses an overlay whose status is not
    ``complete`` with :class:`~napari_wsi_infer._overlay.IncompleteOverlayError`, which napari
    shows as an error notification."""
    layers: list[LayerData] = []
    for p in _paths(path) or []:
        layers.extend(overlay_layer_data(open_overlay(p)))
    return layers


def _paths(path: PathOrPaths) -> list[Path] | None:
    items = path if isinstance(path, list) else [path]
    return [Path(p) for p in items] or None


def _is_slide(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        open_slide(path).close()
    except (SlideError, ValueError):
        return False
    return True
