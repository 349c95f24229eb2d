"""The one rectangle type of the package: pixels ``[x0, x1) × [y0, y1)`` of some image."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    """A half-open pixel rectangle; ``x`` is the column, ``y`` the row."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def of_size(cls, x: int, y: int, width: int, height: int) -> Rect:
        """The rectangle with top-left corner ``(x, y)`` and the given size."""
        return cls(x, y, x + width, y + height)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def grown(self, margin: int) -> Rect:
        """``margin`` more pixels on every side."""
        return Rect(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin)

    def clipped(self, width: int, height: int) -> Rect:
        """The part inside an image of ``width × height``."""
        return Rect(max(0, self.x0), max(0, self.y0), min(width, self.x1), min(height, self.y1))

    def slices(self, origin: Rect | None = None) -> tuple[slice, slice]:
        """``(rows, columns)`` slices of this rectangle in an array whose pixel ``(0, 0)`` is
        ``origin``'s top-left corner (default: the image's)."""
        oy, ox = (origin.y0, origin.x0) if origin is not None else (0, 0)
        return slice(self.y0 - oy, self.y1 - oy), slice(self.x0 - ox, self.x1 - ox)
