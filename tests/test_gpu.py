"""GPU paths: run only where a CUDA device is present, skipped cleanly elsewhere (CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_infer.backends import available_devices
from wsi_infer.pipeline import RunOptions, run_slide

pytestmark = pytest.mark.gpu


def _require(backend: str) -> None:
    if not any(d.startswith(("cuda", "tensorrt")) for d in available_devices()[backend]):
        pytest.skip(f"no CUDA device for {backend} here")


@pytest.mark.parametrize("backend,fp16", [("onnxruntime", False), ("torch", False), ("torch", True)])
def test_cuda_matches_cpu(backend: str, fp16: bool, tiff_slide, tmp_path: Path) -> None:
    _require(backend)
    path, _ = tiff_slide
    common = {"model": "tissue", "backend": backend, "mpp": 0.5, "dtype": "float32", "tissue_mask": False}
    run_slide(path, tmp_path / "cpu.zarr", RunOptions(device="cpu", **common))
    run_slide(path, tmp_path / "gpu.zarr", RunOptions(device="cuda", fp16=fp16, **common))
    a = np.asarray(zarr.open_group(str(tmp_path / "cpu.zarr"), mode="r")["0"][:])
    b = np.asarray(zarr.open_group(str(tmp_path / "gpu.zarr"), mode="r")["0"][:])
    assert np.abs(a - b).max() < (2e-2 if fp16 else 1e-4)
