"""Batch runs with real processes: isolated failures, resume after SIGKILL, a Dask cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from modelzoo import conv_onnx, red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer.batch import collect_items, read_csv_manifest, run_batch
from wsi_infer.errors import WsiInferError
from wsi_infer.overlay import PROGRESS_DIR
from wsi_infer.pipeline import RunOptions

EXE = str(Path(sys.executable).parent / "wsi-infer")


@pytest.fixture
def red_card(tmp_path: Path) -> Path:
    red_channel_onnx(tmp_path / "red.onnx")
    return write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


def overlay(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["0"][:])


def test_bad_slides_are_reported_and_good_ones_finish(tmp_path: Path, red_card: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid(slides / "good1.tif", tissue_image(300, 400, seed=1), mpp=0.5)
    write_pyramid(slides / "good2.svs", tissue_image(300, 400, seed=2), mpp=0.5, svs=True)
    good = (slides / "good1.tif").read_bytes()
    (slides / "corrupt.svs").write_bytes(good[:2000])  # truncated TIFF
    (slides / "notes.txt").write_text("not a slide")
    write_pyramid(slides / "nompp.tif", tissue_image(300, 400), mpp=None)
    out = tmp_path / "out"
    result = subprocess.run([EXE, "batch", str(slides), "--out-dir", str(out), "--model",
                             str(red_card)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 6, result.stderr
    manifest = json.loads((out / "run-manifest.json").read_text())
    by_name = {Path(s["slide"]).name: s for s in manifest["slides"]}
    assert by_name["good1.tif"]["status"] == "done" and by_name["good2.svs"]["status"] == "done"
    assert by_name["corrupt.svs"]["status"] == "failed" and by_name["corrupt.svs"]["exit_code"] == 2
    assert "corrupt.svs" in by_name["corrupt.svs"]["error"]
    assert "not a slide" in by_name["notes.txt"]["error"]
    assert "no microns-per-pixel" in by_name["nompp.tif"]["error"]
    assert manifest["counts"] == {"done": 2, "failed": 3}
    assert zarr.open_group(str(out / "good1.zarr"), mode="r").attrs["wsi_infer"]["status"] == "complete"
    assert not (out / "corrupt.zarr").exists() and not (out / "nompp.zarr").exists()
    assert "nompp.tif" in (out / "wsi-infer.log").read_text()
    # same command again: finished slides are skipped, not recomputed
    again = subprocess.run([EXE, "batch", str(slides), "--out-dir", str(out), "--model",
                            str(red_card)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 6
    manifest = json.loads((out / "run-manifest.json").read_text())
    assert manifest["counts"] == {"skipped": 2, "failed": 3}


def test_csv_manifest_gives_mpp_and_output_names(tmp_path: Path, red_card: Path) -> None:
    write_pyramid(tmp_path / "a.tif", tissue_image(200, 300), mpp=None)
    (tmp_path / "m.csv").write_text("slide,mpp,output\na.tif,0.5,case-001\n")
    items = read_csv_manifest(tmp_path / "m.csv")
    assert items[0].slide == tmp_path / "a.tif" and items[0].mpp == 0.5 and items[0].name == "case-001"
    report = run_batch(items, tmp_path / "out", RunOptions(model=str(red_card)))
    assert report.slides[0].status == "done"
    assert (tmp_path / "out" / "case-001.zarr").is_dir()
    (tmp_path / "bad.csv").write_text("slide,mpp\na.tif,abc\n")
    with pytest.raises(WsiInferError, match=r"bad\.csv:2: mpp 'abc' is not a number"):
        read_csv_manifest(tmp_path / "bad.csv")
    with pytest.raises(WsiInferError, match="same output"):
        collect_items([tmp_path / "a.tif", tmp_path / "a.tif"])


def test_local_cluster_gives_the_same_output(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    conv_onnx(tmp_path / "conv.onnx", kernel=5, classes=2)
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=2,
                      classes=["a", "b"], activation="softmax")
    slides = [write_pyramid(tmp_path / f"s{i}.tif", tissue_image(600, 700, seed=i), mpp=0.5)
              for i in range(2)]
    items = collect_items(slides)
    options = RunOptions(model=str(card), tile_size=64, chunk_size=128, threads=1)
    run_batch(items, tmp_path / "local", options)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        report = run_batch(items, tmp_path / "cluster", options, client=client)
        worker_pids = set(client.run(os.getpid).values())
    assert [s.status for s in report.slides] == ["done", "done"]
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    for i in range(2):
        np.testing.assert_array_equal(overlay(tmp_path / "local" / f"s{i}.zarr"),
                                      overlay(tmp_path / "cluster" / f"s{i}.zarr"))


def test_sigkill_mid_run_then_resume_recomputes_only_missing_chunks(tmp_path: Path, red_card: Path) -> None:
    slide = write_pyramid(tmp_path / "big.tif", tissue_image(2400, 2400), mpp=0.5, tile=256)
    args = ["batch", str(slide), "--model", str(red_card), "--chunk-size", "128", "--tile-size", "64",
            "--no-tissue-mask", "--workers", "1"]
    out = tmp_path / "killed"
    process = subprocess.Popen([EXE, *args, "--out-dir", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    progress = out / "big.zarr" / PROGRESS_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progress.is_dir() and len(os.listdir(progress)) >= 20:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    attrs = zarr.open_group(str(out / "big.zarr"), mode="r").attrs["wsi_infer"]
    assert attrs["status"] == "running"  # recognisably incomplete
    done_before = len(os.listdir(progress))
    assert 20 <= done_before < 19 * 19
    result = subprocess.run([EXE, *args, "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    attrs = zarr.open_group(str(out / "big.zarr"), mode="r").attrs["wsi_infer"]
    assert attrs["status"] == "complete"
    assert attrs["counts"]["chunks_resumed"] == done_before  # markers are written after the data
    assert attrs["counts"]["chunks_run"] + attrs["counts"]["chunks_resumed"] == 19 * 19
    clean = tmp_path / "clean"
    assert subprocess.run([EXE, *args, "--out-dir", str(clean)], capture_output=True).returncode == 0
    np.testing.assert_array_equal(overlay(out / "big.zarr"), overlay(clean / "big.zarr"))


def test_batch_on_dask_scheduler_and_worker_processes(tmp_path: Path, red_card: Path) -> None:
    bindir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file",
                                  str(scheduler_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1",
                                   "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        slides = [write_pyramid(tmp_path / f"s{i}.tif", tissue_image(300, 500, seed=i), mpp=0.5)
                  for i in range(2)]
        result = subprocess.run([EXE, "batch", *map(str, slides), "--out-dir", str(tmp_path / "out"),
                                 "--model", str(red_card), "--scheduler", address],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        manifest = json.loads((tmp_path / "out" / "run-manifest.json").read_text())
        assert manifest["counts"] == {"done": 2}
        rgb = tissue_image(300, 500, seed=1)
        got = overlay(tmp_path / "out" / "s1.zarr")[0]
        computed = got > 0
        assert computed.mean() > 0.3
        np.testing.assert_array_equal(got[computed], rgb[..., 0][computed])
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


def _batch_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "batch", *args], capture_output=True, text=True, timeout=120)


def test_unwritable_out_dir_is_an_output_error(tmp_path: Path, red_card: Path) -> None:
    slide = write_pyramid(tmp_path / "a.tif", tissue_image(200, 300), mpp=0.5)
    (tmp_path / "file").write_text("not a folder")
    result = _batch_cli(str(slide), "--out-dir", str(tmp_path / "file" / "out"), "--model", str(red_card))
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr and "file/out: cannot create the output folder" in result.stderr
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = _batch_cli(str(slide), "--out-dir", str(locked), "--model", str(red_card))
        assert result.returncode == 5 and "not writable" in result.stderr, result.stderr


def test_manifest_without_slide_column_is_a_bad_input(tmp_path: Path, red_card: Path) -> None:
    (tmp_path / "m.csv").write_text("path,mpp\na.tif,0.5\n")
    result = _batch_cli(str(tmp_path / "m.csv"), "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "m.csv: a CSV manifest needs a 'slide' column" in result.stderr
    assert "Traceback" not in result.stderr
