"""The slide reader interface shared by every reader."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

#: mpp values outside this range (micrometres per pixel) are treated as absent or absurd.
MPP_RANGE = (0.01, 200.0)


@dataclass(frozen=True)
class Mpp:
    """Microns per pixel at level 0, and the metadata field it came from."""

    x: float
    y: float
    source: str

    def __post_init__(self) -> None:
        for value in (self.x, self.y):
            if not (MPP_RANGE[0] <= value <= MPP_RANGE[1]):
                raise ValueError(
                    f"mpp {value!r} from {self.source} is outside the plausible range "
                    f"{MPP_RANGE[0]}..{MPP_RANGE[1]} µm/px"
                )


@dataclass(frozen=True)
class SlideInfo:
    """What `wsi-infer info` prints about a slide."""

    path: str
    reader: str
    vendor: str
    width: int
    height: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp_x: float | None
    mpp_y: float | None
    mpp_source: str | None


class SlideReader(abc.ABC):
    """A pyramidal RGB slide opened lazily.

    Coordinates are ``(x, y)`` and sizes ``(width, height)``, as in OpenSlide.  ``read_region``
    takes coordinates *in the pixels of the level it reads*, and returns an ``(h, w, 3)``
    ``uint8`` RGB array; parts of the region outside the slide read as white glass.
    """

    name: str = "base"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abc.abstractmethod
    def vendor(self) -> str:
        """Scanner vendor or file flavour."""

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, finest first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""

    @property
    @abc.abstractmethod
    def mpp(self) -> Mpp | None:
        """Level-0 microns per pixel from the file's metadata, or ``None`` if it has none."""

    @abc.abstractmethod
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read an RGB region of ``level`` at level coordinates ``(x, y)``."""

    def close(self) -> None:
        """Release file handles."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def info(self) -> SlideInfo:
        """Summarise the slide for humans and scripts."""
        mpp = self.mpp
        return SlideInfo(
            path=str(self.path),
            reader=self.name,
            vendor=self.vendor,
            width=self.dimensions[0],
            height=self.dimensions[1],
            level_dimensions=[tuple(d) for d in self.level_dimensions],  # type: ignore[misc]
            level_downsamples=[float(d) for d in self.level_downsamples],
            mpp_x=mpp.x if mpp else None,
            mpp_y=mpp.y if mpp else None,
            mpp_source=mpp.source if mpp else None,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def parse_mpp(x: object, y: object, source: str) -> Mpp | None:
    """Build an :class:`Mpp` from two metadata values, or ``None`` if they are missing.

    Raises ``ValueError`` when the values are present but not a plausible positive number.
    """
    if x in (None, "") and y in (None, ""):
        return None
    try:
        fx = float(x if x not in (None, "") else y)  # type: ignore[arg-type]
        fy = float(y if y not in (None, "") else x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mpp from {source} is not a number: {x!r}, {y!r}") from exc
    if not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0 or fy <= 0:
        raise ValueError(f"mpp from {source} must be positive and finite, got {fx!r}, {fy!r}")
    return Mpp(fx, fy, source)
