"""The command line, run as a real subprocess: output, messages and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from modelzoo import red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

EXE = str(Path(sys.executable).parent / "wsi-infer")


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def red_card(tmp_path: Path) -> Path:
    red_channel_onnx(tmp_path / "red.onnx")
    return write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


def test_run_default_command_writes_overlay_and_summary(tiff_slide, red_card, tmp_path) -> None:
    path, _rgb = tiff_slide
    out = tmp_path / "o.zarr"
    result = cli(path, "--model", red_card, "--device", "cpu", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "tiles run" in result.stderr and str(out) in result.stderr
    assert zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"] == "complete"


def test_default_output_name_is_beside_the_working_directory(tiff_slide, red_card, tmp_path) -> None:
    path, _ = tiff_slide
    work = tmp_path / "work"
    work.mkdir()
    result = cli("run", path, "--model", red_card, "-q", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "slide.red.zarr").is_dir()
    assert result.stderr == ""  # quiet


def test_log_json_prints_a_json_summary(tiff_slide, red_card, tmp_path) -> None:
    path, _ = tiff_slide
    result = cli(path, "--model", red_card, "--out", tmp_path / "o.zarr", "--log-json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["tiles_run"] > 0
    assert summary["tiles_per_second"] > 0


def test_info_json(tiff_slide) -> None:
    path, _ = tiff_slide
    result = cli("info", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["width"], info["height"]) == (1400, 1000)
    assert info["level_downsamples"] == [1.0, 2.0, 4.0]
    assert info["mpp_x"] == pytest.approx(0.5) and "XResolution" in info["mpp_source"]
    text = cli("info", path).stdout
    assert "1400 x 1000" in text and "0.5 x 0.5 µm/px" in text


@pytest.mark.parametrize("case,code,message", [
    ("missing", 2, "no such file"),
    ("text", 2, "not a slide"),
    ("nompp", 2, "no microns-per-pixel"),
    ("device", 4, "device 'cuda:3' is not available"),
    ("card", 3, "invalid model card: field input.layout"),
    ("checksum", 3, "sha256 mismatch"),
    ("exists", 5, "already exists"),
])
def test_errors_have_clear_messages_and_exit_codes(case, code, message, tiff_slide, red_card, tmp_path) -> None:
    path, _ = tiff_slide
    args: list[str | Path] = [path, "--model", red_card, "--out", tmp_path / "o.zarr"]
    if case == "missing":
        args[0] = tmp_path / "missing.svs"
    elif case == "text":
        args[0] = tmp_path / "fake.svs"
        args[0].write_text("hello\n" * 50)
    elif case == "nompp":
        args[0] = write_pyramid(tmp_path / "nompp.tif", tissue_image(300, 300), mpp=None)
    elif case == "device":
        args += ["--device", "cuda:3"]
    elif case == "card":
        card = json.loads(red_card.read_text())
        card["input"]["layout"] = "NWHC"
        red_card.write_text(json.dumps(card))
    elif case == "checksum":
        (tmp_path / "red.onnx").write_bytes((tmp_path / "red.onnx").read_bytes() + b"\0")
    elif case == "exists":
        (tmp_path / "o.zarr").mkdir()
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert str(args[0].name if case in ("missing", "text", "nompp") else "") in result.stderr
    if case != "exists":
        assert not (tmp_path / "o.zarr").exists()  # nothing half-written


def test_models_and_devices_list(tmp_path) -> None:
    devices = json.loads(cli("devices", "--json").stdout)
    assert "cpu" in devices["onnxruntime"]
    models = cli("models", "--json")
    assert models.returncode == 0
    assert isinstance(json.loads(models.stdout), list)


def test_help_lists_commands_and_exit_codes() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for word in ("info SLIDE", "models", "devices", "demo", "exit codes"):
        assert word in result.stdout
    run_help = cli("run", "--help").stdout
    for option in ("--device", "--backend", "--batch-size", "--mpp", "--no-tissue-mask", "--dtype"):
        assert option in run_help


def test_red_channel_through_the_cli_is_pixel_exact(tiff_slide, red_card, tmp_path) -> None:
    path, rgb = tiff_slide
    out = tmp_path / "o.zarr"
    assert cli(path, "--model", red_card, "--out", out, "--no-tissue-mask", "-q").returncode == 0
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][0], rgb[..., 0])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_stops_promptly_and_leaves_output_incomplete(sig, tmp_path, red_card) -> None:
    import os
    import signal
    import time

    path = write_pyramid(tmp_path / "big.tif", tissue_image(2400, 2400), mpp=0.5, tile=256)
    out = tmp_path / "o.zarr"
    # started with SIGINT ignored, as a script's background job is: wsi-infer still stops on it
    process = subprocess.Popen([EXE, str(path), "--model", str(red_card), "--out", str(out),
                                "--chunk-size", "64", "--tile-size", "32", "--no-tissue-mask"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # noqa: PLW1509
    progress = out / "wsi_infer_progress"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (progress.is_dir() and len(os.listdir(progress)) > 5):
        time.sleep(0.01)
    process.send_signal(getattr(signal, sig))
    t0 = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    info = zarr.open_group(str(out), mode="r").attrs["wsi_infer"]
    assert info["status"] == "failed" and "KeyboardInterrupt" in info["error"]


def test_errors_md_holds_the_error_table() -> None:
    """docs/errors.md lists every error class with its exit code and HTTP status, as errors.py
    defines them (print it with `wsi_infer.errors.error_table()`)."""
    from wsi_infer.errors import error_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text(encoding="utf-8")
    assert error_table() in docs
