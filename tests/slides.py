"""Slides for the tests: written with tifffile, plus the real ones in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SLIDES = SHARED / "slides"


def write_pyramid(path: Path, rgb: np.ndarray, *, mpp: float | None, svs: bool = False,
                  tile: int = 128, compression: str = "zlib", levels: int = 3) -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF: generic (SubIFDs, resolution tags) or Aperio SVS
    (pages, ImageDescription with MPP)."""
    pyramid = [rgb]
    for _ in range(levels - 1):
        h, w = pyramid[-1].shape[:2]
        if min(h, w) < 2 * tile:
            break
        pyramid.append(pyramid[-1][: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, 3)
                       .mean(axis=(1, 3)).astype(np.uint8))
    h, w = rgb.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        if svs:
            desc = f"Aperio Image Library v12.0.15 \n{w}x{h} ({tile}x{tile}) JPEG/RGB Q=90|AppMag = 40"
            if mpp is not None:
                desc += f"|MPP = {mpp}"
            for i, level in enumerate(pyramid):
                tif.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                          compressionargs={"level": 95}, description=desc if i == 0 else
                          f"Aperio Image Library v12.0.15 \n{w}x{h} -> {level.shape[1]}x{level.shape[0]}",
                          metadata=None)
        else:
            kwargs = {}
            if mpp is not None:
                kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            tif.write(rgb, tile=(tile, tile), photometric="rgb", compression=compression,
                      subifds=len(pyramid) - 1, metadata=None, **kwargs)
            for level in pyramid[1:]:
                tif.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                          subfiletype=1, metadata=None)
    return path


def tissue_image(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Glass with one textured pink/purple disc of tissue in the middle-left."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 242, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 3) ** 2
    texture = rng.integers(0, 60, (height, width), dtype=np.uint8)
    img[disc] = np.stack([200 - texture[disc] // 2, 90 + texture[disc] // 3,
                          170 - texture[disc] // 4], axis=1)
    return img


def shared_slide(name: str) -> Path:
    path = SHARED_SLIDES / name
    if not path.exists():
        pytest.skip(f"real test slide {path} not present")
    return path
