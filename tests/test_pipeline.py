"""End-to-end behaviour of the pipeline with models whose output is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from modelzoo import conv_onnx, red_channel_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer.backends import create_backend
from wsi_infer.errors import MissingMppError, OutputError
from wsi_infer.models import resolve_model
from wsi_infer.pipeline import RunOptions, run_slide
from wsi_infer.readers import open_slide
from wsi_infer.rect import Rect
from wsi_infer.resolution import plan_level, read_target


@pytest.fixture
def red_card(tmp_path: Path) -> Path:
    red_channel_onnx(tmp_path / "red.onnx")
    return write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])


def level0(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out), mode="r")["0"][:])


def test_red_model_output_is_the_red_channel_to_the_pixel(tiff_slide, red_card, tmp_path) -> None:
    path, rgb = tiff_slide
    out = tmp_path / "out.zarr"
    summary = run_slide(path, out, RunOptions(model=str(red_card), tile_size=96, chunk_size=200,
                                              tissue_mask=False))
    assert summary.status == "complete" and summary.tiles_skipped == 0
    result = level0(out)
    assert result.shape == (1, 1000, 1400)
    np.testing.assert_array_equal(result[0], rgb[..., 0])


def test_resampled_output_matches_a_whole_image_read(tiff_slide, tmp_path) -> None:
    path, _ = tiff_slide
    red_channel_onnx(tmp_path / "red.onnx")
    card = write_card(tmp_path, "red13", {"onnx": "red.onnx"}, mpp=1.3, margin=0, classes=["red"])
    out = tmp_path / "out.zarr"
    run_slide(path, out, RunOptions(model=str(card), tile_size=64, chunk_size=128,
                                    tissue_mask=False, dtype="float32"))
    with open_slide(path) as slide:
        plan = plan_level(slide, slide.mpp, 1.3)  # type: ignore[arg-type]
        whole = read_target(slide, plan, Rect(0, 0, plan.width, plan.height))
    assert plan.level == 1 and plan.width == round(700 / 1.3)  # level 1 (1.0 µm) is finer than 1.3
    result = level0(out)
    assert result.shape == (1, plan.height, plan.width)
    np.testing.assert_allclose(result[0], whole[..., 0] / 255, atol=1e-6)
    attrs = zarr.open_group(str(out), mode="r").attrs
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([1.0, 1.3, 1.3])


def test_tiled_equals_whole_image_run_for_a_convolutional_model(tiff_slide, tmp_path) -> None:
    path, _ = tiff_slide
    conv_onnx(tmp_path / "conv.onnx", kernel=7, classes=2)
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=3,
                      classes=["a", "b"], activation="softmax")
    tiled, whole = tmp_path / "tiled.zarr", tmp_path / "whole.zarr"
    common = {"model": str(card), "tissue_mask": False, "dtype": "float32"}
    summary = run_slide(path, tiled, RunOptions(tile_size=50, chunk_size=150, batch_size=5, **common))
    run_slide(path, whole, RunOptions(tile_size=2048, chunk_size=2048, **common))
    assert summary.tiles_run == 20 * 28
    a, b = level0(tiled), level0(whole)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 1e-5


def test_too_small_halo_is_not_exact(tiff_slide, tmp_path) -> None:
    """The equality above is not vacuous: without the halo, tile borders differ."""
    path, _ = tiff_slide
    conv_onnx(tmp_path / "conv.onnx", kernel=7, classes=1)
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=3,
                      classes=["a"], activation="sigmoid")
    common = {"model": str(card), "tissue_mask": False, "dtype": "float32"}
    run_slide(path, tmp_path / "t.zarr", RunOptions(tile_size=50, halo=0, **common))
    run_slide(path, tmp_path / "w.zarr", RunOptions(tile_size=2048, **common))
    assert np.abs(level0(tmp_path / "t.zarr") - level0(tmp_path / "w.zarr")).max() > 1e-3


def test_fixed_size_model_blends_without_seams(tiff_slide, tmp_path) -> None:
    path, _ = tiff_slide
    conv_onnx(tmp_path / "fixed.onnx", kernel=5, classes=1, size=64)
    conv_onnx(tmp_path / "free.onnx", kernel=5, classes=1)
    fixed = write_card(tmp_path, "fixed", {"onnx": "fixed.onnx"}, mpp=0.5, margin=2,
                       classes=["a"], activation="sigmoid", size=[64, 64])
    free = write_card(tmp_path, "free", {"onnx": "free.onnx"}, mpp=0.5, margin=2,
                      classes=["a"], activation="sigmoid")
    common = {"tissue_mask": False, "dtype": "float32"}
    summary = run_slide(path, tmp_path / "b.zarr", RunOptions(model=str(fixed), halo=8,
                                                              chunk_size=96, **common))
    run_slide(path, tmp_path / "w.zarr", RunOptions(model=str(free), tile_size=2048, **common))
    assert summary.tiles_run > 100
    blended, whole = level0(tmp_path / "b.zarr")[0], level0(tmp_path / "w.zarr")[0]
    error = np.abs(blended - whole)
    assert error.max() < 0.02  # a tile edge never dominates the blend
    # no seam: the jump between neighbouring pixels is no larger across tile borders (x = 48k+8)
    jump = np.abs(np.diff(blended, axis=1))
    borders = [x for x in range(8 + 48 - 1, 1399, 48)]
    assert jump[:, borders].mean() < 1.5 * jump.mean()


def test_background_is_skipped_and_stays_zero(tmp_path) -> None:
    rgb = np.full((900, 1800, 3), 243, np.uint8)
    noise = np.random.default_rng(1).integers(0, 40, (300, 400, 1))
    rgb[300:600, 100:500] = np.array([200, 110, 170]) - noise  # one patch of pink tissue
    path = write_pyramid(tmp_path / "half.tif", rgb, mpp=0.5)
    red_channel_onnx(tmp_path / "red.onnx")
    card = write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])
    masked = run_slide(path, tmp_path / "m.zarr", RunOptions(model=str(card), tile_size=100))
    full = run_slide(path, tmp_path / "f.zarr", RunOptions(model=str(card), tile_size=100,
                                                           tissue_mask=False))
    assert full.tiles_run == 9 * 18 and full.tiles_skipped == 0
    assert masked.tiles_skipped > 100 and masked.tiles_run + masked.tiles_skipped == 9 * 18
    out = level0(tmp_path / "m.zarr")[0]
    assert (out[:, 1000:] == 0).all()  # glass far from tissue: never computed
    np.testing.assert_array_equal(out[300:600, 100:500], rgb[300:600, 100:500, 0])


def test_missing_mpp_is_a_clear_error_and_override_works(tmp_path, red_card) -> None:
    path = write_pyramid(tmp_path / "nompp.tif", tissue_image(400, 500), mpp=None)
    with pytest.raises(MissingMppError, match=r"nompp\.tif: the slide has no microns-per-pixel.*--mpp"):
        run_slide(path, tmp_path / "x.zarr", RunOptions(model=str(red_card)))
    assert not (tmp_path / "x.zarr").exists()
    run_slide(path, tmp_path / "y.zarr", RunOptions(model=str(red_card), mpp=0.5))
    info = zarr.open_group(str(tmp_path / "y.zarr"), mode="r").attrs["wsi_infer"]
    assert info["slide"]["mpp_source"] == "--mpp" and info["slide"]["mpp_x"] == 0.5
    with pytest.raises(MissingMppError, match="invalid --mpp"):
        run_slide(path, tmp_path / "z.zarr", RunOptions(model=str(red_card), mpp=-1.0))


def test_existing_output_is_not_clobbered(tiff_slide, red_card, tmp_path) -> None:
    path, _ = tiff_slide
    out = tmp_path / "o.zarr"
    run_slide(path, out, RunOptions(model=str(red_card)))
    with pytest.raises(OutputError, match="already exists"):
        run_slide(path, out, RunOptions(model=str(red_card)))
    run_slide(path, out, RunOptions(model=str(red_card), overwrite=True))


def test_ome_zarr_metadata_and_provenance(tiff_slide, red_card, tmp_path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    _path, _ = tiff_slide
    big = write_pyramid(tmp_path / "big.tif", tissue_image(2600, 1500), mpp=0.5)
    out = tmp_path / "o.zarr"
    run_slide(big, out, RunOptions(model=str(red_card), batch_size=3))
    node = next(iter(Reader(parse_url(str(out)))()))
    assert node.load(Multiscales) is not None
    assert [d.shape for d in node.data] == [(1, 2600, 1500), (1, 1300, 750), (1, 650, 375)]
    attrs = zarr.open_group(str(out), mode="r").attrs
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    level1 = ms["datasets"][1]["coordinateTransformations"]
    assert level1[0]["scale"] == [1.0, 1.0, 1.0]
    assert level1[1]["translation"] == [0.0, 0.25, 0.25]  # (1.0 - 0.5) / 2: pixel centres align
    assert attrs["omero"]["channels"][0]["label"] == "red"
    info = attrs["wsi_infer"]
    assert info["status"] == "complete"
    assert info["model"]["sha256"] and len(info["model"]["sha256"]) == 64
    assert info["slide"]["fingerprint"].startswith("head-tail-sha256:")
    assert info["tiling"]["batch_size"] == 3
    assert info["runtime"]["backend"] == "onnxruntime"
    assert info["counts"]["tiles_run"] > 0 and "inference_s" in info["timings"]
    l0 = level0(out).astype(np.float32)
    l1 = np.asarray(zarr.open_group(str(out), mode="r")["1"][:])
    expected = l0[:, :2600, :1500].reshape(1, 1300, 2, 750, 2).mean(axis=(2, 4))
    assert np.abs(l1 - np.rint(expected)).max() <= 1


def test_torch_backend_matches_onnxruntime(tiff_slide, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    path, _ = tiff_slide
    conv_onnx(tmp_path / "conv.onnx", kernel=7, classes=2, seed=3)
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "conv.onnx").graph.initializer}
    module = torch.nn.Conv2d(3, 2, 7, padding=3)
    module.weight.data = torch.from_numpy(weights["w"].copy())
    module.bias.data = torch.from_numpy(weights["b"].copy())
    torch.jit.save(torch.jit.trace(module.eval(), torch.zeros(1, 3, 32, 32)), tmp_path / "conv.pt")
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx", "torchscript": "conv.pt"}, mpp=0.5,
                      margin=3, classes=["a", "b"], activation="softmax")
    common = {"model": str(card), "tile_size": 100, "dtype": "float32", "tissue_mask": False}
    run_slide(path, tmp_path / "o.zarr", RunOptions(backend="onnxruntime", **common))
    run_slide(path, tmp_path / "t.zarr", RunOptions(backend="torch", **common))
    assert np.abs(level0(tmp_path / "o.zarr") - level0(tmp_path / "t.zarr")).max() < 1e-5
    info = zarr.open_group(str(tmp_path / "t.zarr"), mode="r").attrs["wsi_infer"]
    assert info["runtime"]["backend"] == "torch" and info["runtime"]["device"] == "torch:cpu"


def test_region_prediction_equals_the_whole_slide_output(tiff_slide, tmp_path) -> None:
    from wsi_infer.region import predict_region
    from wsi_infer.resources import Resources

    path, _ = tiff_slide
    conv_onnx(tmp_path / "conv.onnx", kernel=7, classes=2)
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=3,
                      classes=["a", "b"], activation="softmax")
    options = RunOptions(model=str(card), tile_size=64, chunk_size=128, dtype="float32")
    run_slide(path, tmp_path / "o.zarr", options)
    with Resources() as resources:
        region = predict_region(path, Rect.of_size(301, 155, 222, 190), options, resources=resources)
    assert (region.x0, region.y0) == (301, 155)
    whole = level0(tmp_path / "o.zarr")
    np.testing.assert_allclose(region.probabilities, whole[:, 155:345, 301:523], atol=1e-6)
    assert region.tiles_run == 5 * 4  # only the 64-px tiles under the region


def test_cancel_stops_the_run_and_leaves_it_incomplete(tiff_slide, red_card, tmp_path) -> None:
    from wsi_infer.errors import Cancelled

    path, _ = tiff_slide
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "o.zarr"
    with pytest.raises(Cancelled):
        run_slide(path, out, RunOptions(model=str(red_card), tile_size=32, chunk_size=64,
                                        tissue_mask=False, workers=1), should_stop=stop)
    info = zarr.open_group(str(out), mode="r").attrs["wsi_infer"]
    assert info["status"] == "failed" and "Cancelled" in info["error"]
    assert len(calls) < 16 * 22  # stopped long before all 352 chunks


def test_default_batch_size_follows_the_device(tiff_slide, red_card, tmp_path) -> None:
    """No --batch-size: 2 tiles per call on the CPU with onnxruntime (flat throughput, less
    memory), 1 with torch (faster per tile there), recorded in the provenance."""
    from wsi_infer.backends.base import ACCELERATOR_BATCH_SIZE, CPU_BATCH_SIZE
    from wsi_infer.predictor import Predictor

    path, _ = tiff_slide
    run_slide(path, tmp_path / "o.zarr", RunOptions(model=str(red_card)))
    info = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["wsi_infer"]
    assert info["tiling"]["batch_size"] == CPU_BATCH_SIZE == 2
    card = resolve_model(str(red_card))
    predictor = Predictor(card, create_backend(card, "onnxruntime", "cpu"))
    assert not predictor.backend.accelerated
    assert predictor.batch_size() == CPU_BATCH_SIZE and predictor.batch_size(7) == 7
    assert ACCELERATOR_BATCH_SIZE > CPU_BATCH_SIZE
    torch_card = resolve_model("nuclei")
    assert Predictor(torch_card, create_backend(torch_card, "torch", "cpu")).batch_size() == 1
