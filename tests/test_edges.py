"""Tiled equals whole at every pixel, the bottom and right edges included, for a pooling U-Net
on slides whose sizes are multiples of nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zarr
from modelzoo import conv_onnx, unet_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer.models import BareModel, onnx_size_multiple, resolve_model
from wsi_infer.pipeline import RunOptions, run_slide
from wsi_infer.tiling import AxisTiles, geometry_for

DEPTH, MARGIN = 3, 48  # size multiple 8; the U-Net's receptive margin is 30 px


def whole_image_pass(model: Path, rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Softmax of one pass over the image padded with white to a multiple of ``multiple``."""
    h, w, _ = rgb.shape
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    padded = np.full((ph, pw, 3), 255.0, np.float32)
    padded[:h, :w] = rgb
    x = (padded / 255.0).transpose(2, 0, 1)[None].astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0][0]
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0))[:, :h, :w]


@pytest.fixture
def unet(tmp_path: Path) -> Path:
    return unet_onnx(tmp_path / "unet.onnx", depth=DEPTH)


@pytest.mark.parametrize("height,width,tile,chunk", [(997, 1301, 120, 250), (203, 461, 64, 130),
                                                     (1001, 77, 200, 400)])
def test_pooling_unet_tiled_equals_one_whole_pass_everywhere(tmp_path: Path, unet: Path, height: int,
                                                             width: int, tile: int, chunk: int) -> None:
    rgb = tissue_image(height, width, seed=height)
    slide = write_pyramid(tmp_path / "slide.tif", rgb, mpp=0.5)
    card = write_card(tmp_path, "unet", {"onnx": "unet.onnx"}, mpp=0.5, margin=MARGIN,
                      classes=["a", "b"], activation="softmax", size_multiple=2**DEPTH)
    out = tmp_path / "tiled.zarr"
    run_slide(slide, out, RunOptions(model=str(card), tissue_mask=False, dtype="float32",
                                     tile_size=tile, chunk_size=chunk, batch_size=3))
    tiled = zarr.open_array(str(out / "0"), mode="r")[:]
    whole = whole_image_pass(unet, rgb, 2**DEPTH)
    diff = np.abs(tiled - whole)
    assert diff.max() <= 1e-5, f"max |Δp| {diff.max():.2e} at {np.unravel_index(diff.argmax(), diff.shape)}"


def test_bare_onnx_unet_reads_its_size_multiple_from_the_graph(tmp_path: Path, unet: Path) -> None:
    rgb = tissue_image(333, 517, seed=1)
    slide = write_pyramid(tmp_path / "slide.tif", rgb, mpp=0.5)
    bare = BareModel(mpp=0.5, classes=("a", "b"), activation="softmax", receptive_margin=MARGIN)
    assert resolve_model(str(unet), bare).input.size_multiple == 2**DEPTH
    out = tmp_path / "bare.zarr"
    run_slide(slide, out, RunOptions(model=str(unet), bare_model=bare, tissue_mask=False,
                                     dtype="float32", tile_size=96, chunk_size=192))
    tiled = zarr.open_array(str(out / "0"), mode="r")[:]
    assert np.abs(tiled - whole_image_pass(unet, rgb, 2**DEPTH)).max() <= 1e-5


def test_size_multiple_of_graphs(tmp_path: Path) -> None:
    assert onnx_size_multiple(onnx.load(str(unet_onnx(tmp_path / "u2.onnx", depth=2)))) == 4
    assert onnx_size_multiple(onnx.load(str(unet_onnx(tmp_path / "u4.onnx", depth=4)))) == 16
    assert onnx_size_multiple(onnx.load(str(conv_onnx(tmp_path / "c.onnx")))) == 1


@pytest.mark.parametrize("length", [1, 7, 8, 95, 96, 97, 1000, 1301])
def test_crop_windows_start_on_the_size_multiple_and_end_where_a_whole_pass_ends(length: int) -> None:
    multiple, stride, halo = 16, 96, 32
    axis = AxisTiles(length, min(stride + 2 * halo, -(-length // multiple) * multiple), stride, halo,
                     multiple)
    assert axis.padded_length % multiple == 0 and 0 <= axis.padded_length - length < multiple
    for i in range(axis.count):
        start = axis.start(i)
        a, b = axis.owned(i)
        assert start % multiple == 0
        assert 0 <= start and start + axis.tile <= axis.padded_length
        assert a - start >= halo or start == 0  # context on the left, or the image edge
        assert start + axis.tile - b >= halo or start + axis.tile == axis.padded_length


def test_geometry_aligns_tiles_for_a_size_multiple(tmp_path: Path, unet: Path) -> None:
    card = resolve_model(str(write_card(tmp_path, "unet", {"onnx": "unet.onnx"}, mpp=0.5, margin=45,
                                        classes=["a", "b"], size_multiple=8)))
    geometry = geometry_for(card, 1003, 2049, tile_size=100)
    for axis in (geometry.y, geometry.x):
        assert axis.align == 8 and axis.halo == 48 and axis.stride == 104
        assert all(axis.start(i) % 8 == 0 for i in range(axis.count))
