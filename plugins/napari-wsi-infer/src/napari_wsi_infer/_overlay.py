"""Read the OME-Zarr overlays that wsi-infer writes (see ``docs/output.md``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import zarr
from wsi_infer.output import downsample2

from ._pyramid import halving_pyramid

STATUS_COMPLETE = "complete"


class OverlayError(ValueError):
    """A folder is not a wsi-infer overlay, or not one that may be used."""


class IncompleteOverlayError(OverlayError):
    """The overlay's run has not finished (status ``running``) or failed."""


@dataclass(frozen=True)
class OverlayInfo:
    """What a viewer needs to know about an overlay: classes, geometry and status."""

    path: Path
    classes: tuple[str, ...]
    colors: tuple[str, ...]  # "#RRGGBB"
    shape: tuple[int, int]  # level-0 (height, width)
    scale: tuple[float, float]  # level-0 µm per pixel (y, x)
    translate: tuple[float, float]  # level-0 µm of the centre of pixel (0, 0) (y, x)
    slide_mpp: tuple[float, float]  # (y, x)
    slide_path: str | None
    model: str
    status: str
    error: str | None
    dtype: str
    level_paths: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def value_max(self) -> float:
        """Stored value of probability 1 (255 for uint8, 1 for floats)."""
        return 255.0 if self.dtype == "uint8" else 1.0


def is_overlay(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose ``.zattrs`` has ``multiscales`` and ``wsi_infer``."""
    attrs = _attrs(Path(path))
    return attrs is not None and "multiscales" in attrs and "wsi_infer" in attrs


def open_overlay(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> OverlayInfo:
    """Read an overlay's metadata; refuse (``IncompleteOverlayError``) one whose status is not
    ``complete`` unless ``allow_incomplete`` (a run this process is watching)."""
    path = Path(path)
    attrs = _attrs(path)
    if attrs is None or "multiscales" not in attrs or "wsi_infer" not in attrs:
        raise OverlayError(f"{path}: not a wsi-infer overlay (no multiscales/wsi_infer in .zattrs)")
    info = _parse(path, attrs)
    if not info.complete and not allow_incomplete:
        reason = f" ({info.error})" if info.error else ""
        raise IncompleteOverlayError(
            f"{path}: this overlay is incomplete: its status is {info.status!r}{reason}, not "
            f"'complete'. Let the run finish, or resume it (wsi-infer --resume), then open it again."
        )
    return info


def overlay_pyramid(info: OverlayInfo, generation: int = 0) -> list[da.Array]:
    """Lazy ``(classes, h, w)`` arrays of every level, padded to an exact 2× pyramid.

    While a run is still writing (status not ``complete``) only level 0 holds data yet, so
    the coarser levels are computed from it on the fly with the same 2×2 mean that the run
    will store (``wsi_infer.output.downsample2``).  ``generation`` goes into the dask names:
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


def _attrs(path: Path) -> dict[str, Any] | None:
    if not path.is_dir() or not (path / ".zattrs").is_file():
        return None
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    return dict(attrs)


def _parse(path: Path, attrs: dict[str, Any]) -> OverlayInfo:
    try:
        multiscale = attrs["multiscales"][0]
        datasets = multiscale["datasets"]
        transforms = {t["type"]: t for t in datasets[0]["coordinateTransformations"]}
        scale = transforms["scale"]["scale"][-2:]
        translation = transforms.get("translation", {"translation": [0.0, 0.0]})["translation"][-2:]
        channels = attrs["omero"]["channels"]
        provenance = attrs["wsi_infer"]
        level0 = zarr.open_array(str(path / datasets[0]["path"]), mode="r")
    except (KeyError, IndexError, TypeError) as exc:
        raise OverlayError(f"{path}: malformed wsi-infer overlay metadata: {exc!r}") from exc
    slide = provenance.get("slide") or {}
    slide_mpp = (
        float(slide.get("mpp_y", scale[0] - 2 * translation[0])),
        float(slide.get("mpp_x", scale[1] - 2 * translation[1])),
    )
    return OverlayInfo(
        path=path,
        classes=tuple(str(c.get("label", f"class {i}")) for i, c in enumerate(channels)),
        colors=tuple("#" + str(c.get("color", "FFFFFF")).lstrip("#") for c in channels),
        shape=(int(level0.shape[-2]), int(level0.shape[-1])),
        scale=(float(scale[0]), float(scale[1])),
        translate=(float(translation[0]), float(translation[1])),
        slide_mpp=slide_mpp,
        slide_path=slide.get("path"),
        model=str((provenance.get("model") or {}).get("name", "model")),
        status=str(provenance.get("status", "unknown")),
        error=provenance.get("error"),
        dtype=str(level0.dtype),
        level_paths=tuple(str(d["path"]) for d in datasets),
    )
