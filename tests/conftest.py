"""Shared fixtures: slides written with tifffile, small models with known behaviour."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from slides import tissue_image, write_pyramid


@pytest.fixture
def tiff_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A lossless generic pyramidal TIFF (1000×1400, 0.5 µm/px) and its pixels."""
    rgb = tissue_image(1000, 1400)
    return write_pyramid(tmp_path / "slide.tif", rgb, mpp=0.5), rgb


@pytest.fixture
def svs_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An Aperio-style JPEG SVS (1000×1400, 0.5 µm/px) and the pixels it was made from."""
    rgb = tissue_image(1000, 1400)
    return write_pyramid(tmp_path / "slide.svs", rgb, mpp=0.5, svs=True), rgb
