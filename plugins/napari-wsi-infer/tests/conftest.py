"""Fixtures: a synthetic SVS, the real CMU slide when present, the model, a finished overlay."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from wsi_infer.models import builtin_models
from wsi_infer.pipeline import RunOptions, run_slide
from wsi_infer.synthetic import make_slide

SHARED_SLIDES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "slides"
CMU_SMALL = SHARED_SLIDES / "CMU-1-Small-Region.svs"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a display Qt aborts the whole process: skip the viewer tests instead."""
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") \
            or os.environ.get("WAYLAND_DISPLAY"):
        return
    skip = pytest.mark.skip(reason="napari needs a display: run the tests under xvfb-run -a")
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4,000 × 3,000 px Aperio-style SVS at 0.5 µm/px with levels 1, 4, 16."""
    folder = tmp_path_factory.mktemp("slides")
    return make_slide(folder / "synthetic.svs", width=4000, height=3000, mpp=0.5, kind="svs",
                      seed=1)


@pytest.fixture
def real_slide() -> Path:
    """CMU-1-Small-Region.svs from ../shared/data (skipped when absent)."""
    if not CMU_SMALL.is_file():
        pytest.skip(f"{CMU_SMALL} not present")
    return CMU_SMALL


@pytest.fixture(scope="session")
def model() -> str:
    """The built-in ``tissue`` model (``models/tissue/card.json``)."""
    if "tissue" not in builtin_models():
        pytest.fail("the built-in tissue model is missing: python models/tissue/train.py "
                    "--out models/tissue")
    return "tissue"


@pytest.fixture(scope="session")
def overlay_path(slide_path: Path, model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete overlay of ``slide_path``, made with ``run_slide`` (no GUI)."""
    out = tmp_path_factory.mktemp("overlay") / "synthetic.tissue.zarr"
    summary = run_slide(slide_path, out, RunOptions(model=model, workers=2))
    assert summary.status == "complete"
    return out

