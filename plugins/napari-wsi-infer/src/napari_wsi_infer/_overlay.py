"""Show the OME-Zarr overlays that wsi-infer writes: the format itself (open, status,
provenance) is read by ``wsi_infer.overlay``, the one module that writes and reads it."""

from __future__ import annotations

import dask.array as da
import zarr
from wsi_infer.errors import IncompleteOverlayError, OverlayError
from wsi_infer.overlay import OverlayInfo, downsample2, is_overlay, open_overlay

from ._pyramid import halving_pyramid

__all__ = ["IncompleteOverlayError", "OverlayError", "OverlayInfo", "is_overlay", "open_overlay",
           "overlay_pyramid"]


def overlay_pyramid(info: OverlayInfo, generation: int = 0) -> list[da.Array]:
    """Lazy ``(classes, h, w)`` arrays of every level, padded to an exact 2× pyramid.

    While a run is still writing (status not ``complete``) only level 0 holds data yet, so
    the coarser levels are computed from it on the fly with the same 2×2 mean that the run
    will store (``wsi_infer.overlay.downsample2``).  ``generation`` goes into the dask names:
    napari caches computed blocks by name, so a layer refreshed while a run writes new chunks
    needs new names to show them.
    """
    def level(path: str) -> da.Array:
        array = zarr.open_array(str(info.path / path), mode="r")
        return da.from_zarr(array, name=f"wsi-overlay-{info.path}-{path}-{generation}")

    if info.complete:
        levels = [level(p) for p in info.level_paths]
    else:
        levels = [level(info.level_paths[0])]
        for _ in info.level_paths[1:]:
            levels.append(downsample2(levels[-1], info.dtype))  # type: ignore[arg-type]
    return halving_pyramid(levels)
