"""One owner per output: real concurrent processes, SIGKILL, and the status write's check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from modelzoo import red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer.errors import OutputError, OutputInUseError
from wsi_infer.overlay import PROGRESS_DIR, OverlaySpec, OverlayWriter
from wsi_infer.ownership import OutputLock, lock_path

EXE = str(Path(sys.executable).parent / "wsi-infer")


@pytest.fixture
def red_card(tmp_path: Path) -> Path:
    red_channel_onnx(tmp_path / "red.onnx")
    return write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


@pytest.fixture
def big_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb = tissue_image(2400, 2400)
    return write_pyramid(tmp_path / "big.tif", rgb, mpp=0.5, tile=256), rgb


def slow_run(slide: Path, card: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    """A run of ~10 s (many small chunks), started in its own process."""
    return subprocess.Popen([EXE, str(slide), "--model", str(card), "--out", str(out),
                             "--chunk-size", "64", "--tile-size", "32", "--no-tissue-mask", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_chunks(out: Path, n: int) -> None:
    progress = out / PROGRESS_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (progress.is_dir() and len(os.listdir(progress)) > n):
        time.sleep(0.01)


def test_a_second_run_is_refused_while_the_first_writes(big_slide, red_card: Path, tmp_path: Path) -> None:
    slide, rgb = big_slide
    out = tmp_path / "o.zarr"
    first = slow_run(slide, red_card, out)
    wait_for_chunks(out, 5)
    assert first.poll() is None, "the first run ended before the test could race it"
    for extra in (["--overwrite"], []):  # a late --overwrite, and a plain second run
        second = subprocess.run([EXE, str(slide), "--model", str(red_card), "--out", str(out),
                                 "--no-tissue-mask", *extra], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 5, second.stderr
        assert f"o.zarr: in use by another run (pid {first.pid} on host {socket.gethostname()}" \
            in second.stderr
        assert "Traceback" not in second.stderr and "partial" not in second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    info = zarr.open_group(str(out), mode="r").attrs["wsi_infer"]
    assert info["status"] == "complete"
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[0], rgb[..., 0])
    assert not lock_path(out).exists()  # a finished run leaves no lock file


def test_the_lock_dies_with_a_killed_run(big_slide, red_card: Path, tmp_path: Path) -> None:
    slide, rgb = big_slide
    out = tmp_path / "o.zarr"
    first = slow_run(slide, red_card, out)
    wait_for_chunks(out, 5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_path(out).exists()  # the file stays; the lock on it died with the process
    again = subprocess.run([EXE, str(slide), "--model", str(red_card), "--out", str(out),
                            "--no-tissue-mask", "--overwrite", "-q"], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"] == "complete"
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[0], rgb[..., 0])


def test_two_runs_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    with OutputLock(out) as lock:
        with pytest.raises(OutputInUseError, match=rf"in use by another run in this process \(pid {os.getpid()}"):
            OutputLock(out).acquire()
        assert lock.still_owned()
    with OutputLock(out):  # released: free again
        pass


def _writer(path: Path, lock: OutputLock) -> OverlayWriter:
    spec = OverlaySpec(height=64, width=64, chunk=64, class_names=("a",), class_colors=("#ffffff",),
                       mpp_x=1.0, mpp_y=1.0, slide_mpp_x=0.5, slide_mpp_y=0.5)
    return OverlayWriter.create(path, spec, {"model": {"name": "m"}}, lock=lock)


def test_the_status_write_checks_the_run_still_owns_the_output(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    with OutputLock(out) as lock:
        writer = _writer(out, lock)
        group = zarr.open_group(str(out), mode="r+")
        group.attrs["wsi_infer"] = {**group.attrs["wsi_infer"], "run_id": "someone-else"}
        with pytest.raises(OutputError, match="another run .* has taken the output over"):
            writer.set_status("complete")
    with OutputLock(tmp_path / "p.zarr") as lock:
        writer = _writer(tmp_path / "p.zarr", lock)
    with pytest.raises(OutputError, match="no longer owns the output"):  # lock released
        writer.set_status("complete")
    assert zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["wsi_infer"]["status"] == "running"
