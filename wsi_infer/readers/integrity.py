"""Cheap structural checks of TIFF-based slides (SVS, NDPI, generic/OME TIFF) before use.

A truncated file often still opens: its first levels are intact and only later pages or tiles
are gone.  Walking the IFD chain and checking that every tile lies inside the file finds it in
milliseconds, so such a slide is refused instead of half-read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tifffile

from ..errors import SlideOpenError

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a TIFF or BigTIFF header."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) in _TIFF_MAGIC


def check_tiff_integrity(path: Path) -> None:
    """Raise :class:`SlideOpenError` if the IFD chain is broken or tile data lies past the end."""
    size = path.stat().st_size
    collect = _Collect()
    logger = logging.getLogger("tifffile")
    logger.addHandler(collect)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            for index, page in enumerate(pages):
                offsets = getattr(page, "dataoffsets", ()) or ()
                counts = getattr(page, "databytecounts", ()) or ()
                end = max((o + c for o, c in zip(offsets, counts, strict=False) if c), default=0)
                if end > size:
                    raise SlideOpenError(
                        f"{path}: the file is truncated or corrupt: image data of page {index} "
                        f"ends at byte {end} but the file has {size} bytes")
    except SlideOpenError:
        raise
    except Exception as exc:
        raise SlideOpenError(f"{path}: corrupt TIFF structure: {type(exc).__name__}: {exc}") from exc
    finally:
        logger.removeHandler(collect)
    broken = [m for m in collect.messages if "invalid" in m.lower() or "corrupt" in m.lower()]
    if broken:
        raise SlideOpenError(f"{path}: the file is truncated or corrupt: {broken[0]}")
