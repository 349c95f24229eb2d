"""The built-in default model end to end on every real slide in ../shared/data (when present)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from slides import shared_slide

from wsi_infer.readers import open_slide
from wsi_infer.tissue import detect_tissue

EXE = str(Path(sys.executable).parent / "wsi-infer")
pytestmark = pytest.mark.realdata


@pytest.mark.parametrize("name", [
    "CMU-1-Small-Region.svs",
    "test3-DAPI-2-387.ndpi",
    "multi_frame_jpeg2000_camelyon_challenge_image.dcm",
    "openslide-python_small.svs",
])
def test_default_model_on_real_slide(name: str, tmp_path: Path) -> None:
    path = shared_slide(name)
    out = tmp_path / "out.zarr"
    result = subprocess.run([EXE, str(path), "--device", "cpu", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(str(out), mode="r")
    info = group.attrs["wsi_infer"]
    assert info["status"] == "complete"
    with open_slide(path) as slide:
        width, height = slide.dimensions
        mpp = slide.mpp
        assert mpp is not None
        tissue = detect_tissue(slide, mpp)
    level0 = group["0"]
    out_mpp = info["output"]["mpp_x"], info["output"]["mpp_y"]
    assert abs(level0.shape[2] - width * mpp.x / out_mpp[0]) <= 1
    assert abs(level0.shape[1] - height * mpp.y / out_mpp[1]) <= 1
    assert group.attrs["omero"]["channels"][0]["label"] == "tissue"
    if tissue.modality == "brightfield" and tissue.fraction > 0:
        # the tissue channel covers the tissue: most detected tissue is predicted as tissue
        probability = np.asarray(level0[0]).astype(np.float32) / 255
        ys = (np.arange(probability.shape[0]) * out_mpp[1] / tissue.mpp_y).astype(int)
        xs = (np.arange(probability.shape[1]) * out_mpp[0] / tissue.mpp_x).astype(int)
        from wsi_infer.tissue import tissue_from_rgb  # noqa: F401  (documented method)
        mask = tissue.mask[np.clip(ys, 0, tissue.mask.shape[0] - 1)][:, np.clip(xs, 0, tissue.mask.shape[1] - 1)]
        assert (probability[mask] > 0.5).mean() > 0.7


def test_nuclei_model_on_real_brightfield_slide(tmp_path: Path) -> None:
    path = shared_slide("CMU-1-Small-Region.svs")
    out = tmp_path / "nuclei.zarr"
    result = subprocess.run([EXE, str(path), "--model", "nuclei", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["wsi_infer"]["status"] == "complete"
    assert group["0"].shape == (1, 2967, 2220)  # 0.499 µm/px is within 2 % of 0.5: read as is
    nuclei = np.asarray(group["0"][0]) > 127
    assert 0.02 < nuclei.mean() < 0.4  # nuclei are a minority of the pixels, but present


def test_full_resolution_model_refuses_a_far_coarser_slide(tmp_path: Path) -> None:
    path = shared_slide("multi_frame_jpeg2000_camelyon_challenge_image.dcm")
    out = tmp_path / "o.zarr"
    result = subprocess.run([EXE, str(path), "--model", "nuclei", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "58x coarser" in result.stderr and "nuclei" in result.stderr
    assert not out.exists()


def test_slide_openslide_cannot_open_exits_2_without_output(tmp_path: Path) -> None:
    path = shared_slide("pathml_small_dicom.dcm")
    out = tmp_path / "out.zarr"
    result = subprocess.run([EXE, str(path), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pathml_small_dicom.dcm" in result.stderr and "not a slide" in result.stderr
    assert not out.exists()
