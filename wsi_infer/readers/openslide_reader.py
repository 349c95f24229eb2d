"""Slides read with OpenSlide (SVS, NDPI, MRXS, SCN, BIF, DICOM, VMS, generic tiled TIFF...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from ..errors import SlideOpenError, SlideReadError
from .base import Mpp, SlideReader, parse_mpp


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Flatten an RGBA region onto white: transparent padding becomes glass, not black."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideReader(SlideReader):
    """A slide opened with openslide-python (and the openslide-bin library)."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
            raise SlideOpenError(f"{path}: OpenSlide cannot open it: {exc}") from exc
        self._props = dict(self._slide.properties)

    @property
    def vendor(self) -> str:
        return self._props.get("openslide.vendor", "unknown")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def mpp(self) -> Mpp | None:
        return parse_mpp(
            self._props.get(openslide.PROPERTY_NAME_MPP_X),
            self._props.get(openslide.PROPERTY_NAME_MPP_Y),
            source="openslide.mpp-x/openslide.mpp-y",
        )

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))
        try:
            image = self._slide.read_region(location, level, (width, height))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(
                f"{self.path}: failed to decode region x={x} y={y} {width}x{height} "
                f"at level {level}: {exc}"
            ) from exc
        return composite_on_white(np.asarray(image))

    def close(self) -> None:
        self._slide.close()
