"""The table of bad inputs in docs/errors.md: each row's message, exit code and what is left."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from modelzoo import conv_onnx, red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

EXE = str(Path(sys.executable).parent / "wsi-infer")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)


def status(out: Path) -> str | None:
    if not out.exists():
        return None
    return str(zarr.open_group(str(out), mode="r").attrs["wsi_infer"]["status"])


@pytest.fixture
def red_card(tmp_path: Path) -> Path:
    red_channel_onnx(tmp_path / "red.onnx")
    return write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


@pytest.fixture
def svs(tmp_path: Path) -> Path:
    return write_pyramid(tmp_path / "slide.svs", tissue_image(1200, 1600), mpp=0.5, svs=True, tile=128)


def test_jpeg_renamed_svs(tmp_path: Path, red_card: Path) -> None:
    import imagecodecs

    fake = tmp_path / "photo.svs"
    fake.write_bytes(imagecodecs.jpeg8_encode(tissue_image(200, 300)))
    result = cli(fake, "--model", red_card, "--out", tmp_path / "o.zarr")
    assert result.returncode == 2 and "photo.svs: not a slide" in result.stderr
    assert status(tmp_path / "o.zarr") is None


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9])
def test_truncated_svs(fraction: float, svs: Path, red_card: Path, tmp_path: Path) -> None:
    data = svs.read_bytes()
    cut = tmp_path / f"cut{int(fraction * 100)}.svs"
    cut.write_bytes(data[: int(len(data) * fraction)])
    out = tmp_path / "o.zarr"
    result = cli(cut, "--model", red_card, "--out", out, "--no-tissue-mask")
    assert result.returncode == 2, result.stderr
    assert cut.name in result.stderr
    assert status(out) in (None, "failed")  # never complete


def test_bit_flipped_tiles_never_give_a_silent_complete_with_garbage(svs: Path, red_card: Path,
                                                                    tmp_path: Path) -> None:
    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    data = bytearray(svs.read_bytes())
    for i in range(0, len(offsets), 3):  # damage every third tile's entropy-coded data
        for k in range(counts[i] // 2, counts[i] - 4, 7):
            data[offsets[i] + k] ^= 0xFF
    flipped = tmp_path / "flipped.svs"
    flipped.write_bytes(bytes(data))
    out = tmp_path / "o.zarr"
    result = cli(flipped, "--model", red_card, "--out", out, "--no-tissue-mask")
    # libjpeg decodes some damage without complaint (pixels change), and reports the rest;
    # either way the run never crashes, names the file when it fails, and a failure is not complete.
    assert result.returncode in (0, 2), result.stderr
    if result.returncode == 2:
        assert "flipped.svs" in result.stderr and status(out) in (None, "failed")


@pytest.mark.parametrize("mpp,message", [("0", "must be positive"), ("-0.25", "must be positive"),
                                         ("abc", "not a number"), ("1e9", "plausible range")])
def test_absurd_mpp_metadata(mpp: str, message: str, tmp_path: Path, red_card: Path) -> None:
    path = write_pyramid(tmp_path / "weird.svs", tissue_image(300, 400), mpp=None, svs=True)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tag = tif.pages[0].tags["ImageDescription"]
        tag.overwrite(tag.value + f"|MPP = {mpp}")
    result = cli(path, "--model", red_card, "--out", tmp_path / "o.zarr")
    assert result.returncode == 2
    assert "weird.svs" in result.stderr and "--mpp" in result.stderr
    assert message in result.stderr or "no microns-per-pixel" in result.stderr
    assert status(tmp_path / "o.zarr") is None


def test_absurd_dimensions(tmp_path: Path, red_card: Path) -> None:
    path = write_pyramid(tmp_path / "huge.tif", tissue_image(256, 256), mpp=0.5, levels=1)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(10**9)
    result = cli(path, "--model", red_card, "--out", tmp_path / "o.zarr", "--reader", "tifffile")
    assert result.returncode == 2, result.stderr
    assert "huge.tif" in result.stderr
    assert status(tmp_path / "o.zarr") is None


def test_tiny_slide_smaller_than_one_tile(tmp_path: Path, red_card: Path) -> None:
    rgb = tissue_image(20, 30)
    path = write_pyramid(tmp_path / "tiny.tif", rgb, mpp=0.5, tile=16, levels=1)
    out = tmp_path / "o.zarr"
    result = cli(path, "--model", red_card, "--out", out, "--no-tissue-mask")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][0], rgb[..., 0])


def test_slide_with_no_tissue_completes_empty_with_a_warning(tmp_path: Path, red_card: Path) -> None:
    path = write_pyramid(tmp_path / "glass.tif", np.full((800, 900, 3), 240, np.uint8), mpp=0.5)
    out = tmp_path / "o.zarr"
    result = cli(path, "--model", red_card, "--out", out, "--log-json")
    assert result.returncode == 0
    assert "no tissue found" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["tiles_run"] == 0 and summary["tiles_skipped"] > 0
    assert status(out) == "complete"
    assert not np.asarray(zarr.open_group(str(out), mode="r")["0"][:]).any()


def test_fluorescence_slide_warns(tmp_path: Path, red_card: Path) -> None:
    rgb = np.zeros((600, 600, 3), np.uint8)
    rgb[200:400, 200:400, 2] = 180  # DAPI-like blue nuclei region on black
    path = write_pyramid(tmp_path / "dapi.tif", rgb, mpp=0.5)
    result = cli(path, "--model", red_card, "--out", tmp_path / "o.zarr")
    assert result.returncode == 0
    assert "fluorescence" in result.stderr


def test_output_under_a_file_is_not_writable(tmp_path: Path, red_card: Path, svs: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = cli(svs, "--model", red_card, "--out", tmp_path / "afile" / "o.zarr")
    assert result.returncode == 5 and "cannot create output" in result.stderr


def test_full_disk_is_a_clear_error_and_not_complete(tmp_path: Path, red_card: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        noisy = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
        path = write_pyramid(tmp_path / "noisy.tif", noisy, mpp=0.5, tile=256)
        out = mount / "o.zarr"
        result = cli(path, "--model", red_card, "--out", out, "--no-tissue-mask")
        assert result.returncode == 5, result.stderr
        assert "o.zarr" in result.stderr and "No space left on device" in result.stderr
        assert status(out) in (None, "running", "failed")
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_model_output_shape_not_as_declared(tmp_path: Path, svs: Path) -> None:
    conv_onnx(tmp_path / "conv.onnx", kernel=3, classes=1)
    card = write_card(tmp_path, "liar", {"onnx": "conv.onnx"}, mpp=0.5, margin=1,
                      classes=["a", "b"], activation="softmax")  # declares 2 classes, makes 1
    result = cli(svs, "--model", card, "--out", tmp_path / "o.zarr")
    assert result.returncode == 3
    assert "output shape" in result.stderr and "does not match the card" in result.stderr
    assert not (tmp_path / "o.zarr").exists()  # found before anything was written


def test_model_output_out_of_declared_range(tmp_path: Path, svs: Path) -> None:
    conv_onnx(tmp_path / "conv.onnx", kernel=3, classes=1)
    card = write_card(tmp_path, "raw", {"onnx": "conv.onnx"}, mpp=0.5, margin=1,
                      classes=["a"], activation="none")  # says probabilities, gives logits
    result = cli(svs, "--model", card, "--out", tmp_path / "o.zarr")
    assert result.returncode == 3 and "outside the declared range" in result.stderr


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("open(__import__('os').environ['PWNED'], 'w').write('pwned')",))


def test_unsafe_pickle_model_is_refused_and_never_executed(tmp_path: Path, svs: Path) -> None:
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(_Payload()))
    card = write_card(tmp_path, "evil", {"torchscript": "model.pt"}, mpp=0.5, margin=0, classes=["a"])
    marker = tmp_path / "pwned"
    result = subprocess.run([EXE, str(svs), "--model", str(card), "--backend", "torch", "--out",
                             str(tmp_path / "o.zarr")], capture_output=True, text=True,
                            env={**__import__("os").environ, "PWNED": str(marker)})
    assert result.returncode == 3, result.stderr
    assert "model.pt" in result.stderr and "not a TorchScript archive" in result.stderr
    assert not marker.exists()
    plain = cli(svs, "--model", evil, "--out", tmp_path / "o.zarr")  # a bare pickle as --model
    assert plain.returncode == 3 and not marker.exists()
