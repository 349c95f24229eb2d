"""The examples in examples/ run for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelzoo import red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make_scans(tmp_path: Path) -> tuple[Path, Path]:
    scans = tmp_path / "scans"
    scans.mkdir()
    write_pyramid(scans / "a.tif", tissue_image(300, 400, seed=1), mpp=0.5)
    write_pyramid(scans / "b.svs", tissue_image(300, 400, seed=2), mpp=0.5, svs=True)
    (scans / "broken.svs").write_bytes(b"II*\0garbage")
    red_channel_onnx(tmp_path / "red.onnx")
    return scans, write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


def test_nightly_batch_example(tmp_path: Path) -> None:
    scans, card = make_scans(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(EXAMPLES / "nightly_batch.py"), str(scans), str(out),
                             "--model", str(card)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 6, result.stderr
    summary = (out / "summary.txt").read_text()
    assert "done: 2" in summary and "failed: 1" in summary and "broken.svs" in summary


def test_cluster_batch_example_with_a_local_cluster(tmp_path: Path) -> None:
    scans, card = make_scans(tmp_path)
    (scans / "broken.svs").unlink()
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(EXAMPLES / "cluster_batch.py"), str(scans), str(out),
                             "--model", str(card), "--local-workers", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stdout and "'done': 2" in result.stdout
    assert (out / "a.zarr").is_dir() and (out / "b.zarr").is_dir()
