"""The plugin in a real napari viewer: readers, whole-slide and field-of-view runs, Cancel,
threshold review and export, driven through the widget's buttons."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from raster import iou, rasterize
from wsi_infer.errors import Cancelled
from wsi_infer.overlay import PROGRESS_DIR, read_status
from wsi_infer.readers import open_slide

from napari_wsi_infer._widget import WsiInferWidget

PLUGIN = "napari-wsi-infer"
RUN_TIMEOUT_MS = 60_000


def open_widget(viewer) -> WsiInferWidget:  # type: ignore[no-untyped-def]
    """The widget as napari docks it from the plugin manifest."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Run and review")
    assert isinstance(widget, WsiInferWidget)
    return widget


def wait_idle(qtbot, widget: WsiInferWidget) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not widget.run_panel.busy, timeout=RUN_TIMEOUT_MS)


def world_of(layer, index: tuple[float, float]) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(layer.data_to_world(index))


def test_slide_reader_gives_lazy_exact_multiscale(make_napari_viewer, slide_path: Path) -> None:
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(slide_path), plugin=PLUGIN)
    assert isinstance(layer, Image) and layer.rgb and layer.multiscale
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (0.0, 0.0)
    np.testing.assert_array_equal(layer.downsample_factors[:, :2], [[1, 1], [4, 4], [16, 16]])
    assert type(layer.data[0]).__module__.startswith("dask")
    with open_slide(slide_path) as slide:
        np.testing.assert_array_equal(np.asarray(layer.data[0][700:764, 1200:1300]),
                                      slide.read_region(0, 1200, 700, 100, 64))
        # level 2 (downsample 16.02): compare at its origin, where OpenSlide reads it exactly
        np.testing.assert_array_equal(np.asarray(layer.data[2][0:20, 0:50]),
                                      slide.read_region(2, 0, 0, 50, 20))
    # level-0 pixel (y, x) is centred at (y, x) × mpp µm
    np.testing.assert_allclose(world_of(layer, (700, 1200)), [350.0, 600.0])


@pytest.mark.realdata
def test_real_slide_field_of_view(real_slide: Path, make_napari_viewer, qtbot,
                                  model: str) -> None:
    # real_slide comes first: when it skips, napari's viewer fixture is never set up (its
    # teardown fails on tests that skipped before their call phase)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(real_slide), plugin=PLUGIN)
    assert layer.data.shape == (2967, 2220, 3)  # a single-level SVS
    np.testing.assert_allclose(layer.scale, [0.499, 0.499])
    with open_slide(real_slide) as slide:
        np.testing.assert_array_equal(np.asarray(layer.data[1000:1010, 500:520]),
                                      slide.read_region(0, 500, 1000, 20, 10))
    widget = open_widget(viewer)
    widget.run_panel.model_combo.setCurrentText(model)
    viewer.reset_view()
    qtbot.mouseClick(widget.run_panel.fov_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    prediction = widget.run_panel.last_fov
    assert widget.run_panel.last_error is None and prediction is not None
    [region] = [lyr for lyr in viewer.layers if lyr.metadata.get("wsi_infer", {}).get("kind") == "region"]
    # the whole slide is on screen: output pixel (0, 0) is the slide's top-left corner
    assert (prediction.x0, prediction.y0) == (0, 0)
    sy, sx = prediction.mpp_y, prediction.mpp_x
    np.testing.assert_allclose(region.translate, [(sy - 0.499) / 2, (sx - 0.499) / 2])
    # the corner of output pixel (0, 0) is the corner of slide pixel (0, 0)
    np.testing.assert_allclose(region.data_to_world((-0.5, -0.5)), layer.data_to_world((-0.5, -0.5)))
    tissue = prediction.probabilities[0] > 0.5
    assert 0.2 < tissue.mean() < 0.95  # CMU-1-Small-Region is mostly tissue, with some glass


def test_overlay_reader_places_overlay_on_slide(make_napari_viewer, slide_path: Path,
                                                overlay_path: Path) -> None:
    viewer = make_napari_viewer()
    widget = open_widget(viewer)  # its Open buttons use the plugin's readers
    [slide] = widget.run_panel.open_path(slide_path)
    [overlay] = widget.run_panel.open_path(overlay_path)
    assert widget.run_panel.slide_combo.currentText() == slide.name == slide_path.name
    assert overlay.name.endswith(": tissue")
    assert tuple(overlay.scale) == (4.0, 4.0) and tuple(overlay.translate) == (1.75, 1.75)
    assert overlay.opacity == pytest.approx(0.5) and tuple(overlay.contrast_limits) == (0, 255)
    np.testing.assert_allclose(overlay.colormap.colors[-1], [44 / 255, 160 / 255, 44 / 255, 1])
    stored = zarr.open_array(str(overlay_path / "0"), mode="r")
    data0 = overlay.data[0] if overlay.multiscale else overlay.data
    np.testing.assert_array_equal(np.asarray(data0[:375, :500]), stored[0])
    # overlay pixel (r, c) covers slide pixels [8r, 8r + 8): its centre is slide pixel 8r + 3.5
    for r, c in [(0, 0), (100, 200), (374, 499)]:
        np.testing.assert_allclose(world_of(overlay, (r, c)),
                                   world_of(slide, (8 * r + 3.5, 8 * c + 3.5)))


def test_incomplete_overlay_is_refused_by_the_reader(make_napari_viewer, overlay_path: Path,
                                                     tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "running.zarr"
    shutil.copytree(overlay_path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["wsi_infer"] = {**group.attrs["wsi_infer"], "status": "failed", "error": "boom"}
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="incomplete: its status is 'failed' \\(boom\\)"):
        viewer.open(str(copy), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_whole_slide_run_review_and_export(make_napari_viewer, qtbot, slide_path: Path,
                                           model: str, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(slide_path), plugin=PLUGIN)
    widget = open_widget(viewer)
    widget.run_panel.model_combo.setCurrentText(model)
    out = tmp_path / "run.zarr"
    widget.run_panel.output_edit.setText(str(out))
    qtbot.mouseClick(widget.run_panel.run_button, Qt.MouseButton.LeftButton)
    assert widget.run_panel.busy
    wait_idle(qtbot, widget)
    assert widget.run_panel.last_error is None and widget.run_panel.last_summary is not None
    assert read_status(out) == "complete"
    assert "Done:" in widget.run_panel.status_label.text()

    [overlay] = [lyr for lyr in viewer.layers if lyr.metadata.get("wsi_infer", {}).get("kind") == "overlay"]
    stored = zarr.open_array(str(out / "0"), mode="r")[0]
    data0 = overlay.data[0] if overlay.multiscale else overlay.data
    np.testing.assert_array_equal(np.asarray(data0)[: stored.shape[0], : stored.shape[1]], stored)
    np.testing.assert_allclose(world_of(overlay, (120, 310)), world_of(slide, (963.5, 2483.5)))
    assert stored.max() > 200 and stored.min() < 50  # tissue and glass

    # review: the run selected its overlay; the mask and the areas follow the slider
    assert widget.review_panel.source_combo.currentText() == overlay.name
    widget.review_panel.threshold_slider.setValue(60)
    mask = viewer.layers[f"{overlay.name} mask"]
    assert isinstance(mask, Labels)
    expected = stored / 255.0 > 0.6
    np.testing.assert_array_equal(mask.data.astype(bool), expected)
    np.testing.assert_allclose(mask.scale, overlay.scale)
    np.testing.assert_allclose(mask.translate, overlay.translate)
    areas = widget.review_panel.update_review()
    assert areas is not None
    assert areas["tissue"] == pytest.approx(expected.sum() * 4.0 * 4.0 / 1e6)
    assert f"tissue: {expected.sum() * 16 / 1e6:.3f} mm²" in widget.review_panel.areas_label.text()

    # export: GeoJSON polygons drawn back match the mask
    count = widget.review_panel.export_geojson(tmp_path / "tissue.geojson")
    features = json.loads((tmp_path / "tissue.geojson").read_text())["features"]
    assert count == len(features) > 0
    drawn = rasterize(features, lambda xy: (xy[:, 1] / 8, xy[:, 0] / 8), expected.shape)
    score = iou(drawn, expected)
    print(f"widget GeoJSON round trip IoU: {score:.6f}")
    assert score > 0.95
    assert widget.review_panel.export_png(tmp_path / "thumb.png") == (768, 1024)


def test_cancel_stops_the_run(make_napari_viewer, qtbot, slide_path: Path, model: str,
                              tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(slide_path), plugin=PLUGIN)
    widget = open_widget(viewer)
    widget.run_panel.model_combo.setCurrentText(model)
    widget.run_panel.tile_spin.setValue(64)
    widget.run_panel.chunk_spin.setValue(64)  # 6 × 8 chunks of 64 × 64 output pixels
    out = tmp_path / "cancelled.zarr"
    widget.run_panel.output_edit.setText(str(out))

    # hold the run at its first finished chunk until Cancel has been clicked
    first_chunk, clicked = threading.Event(), threading.Event()

    def hold(done: int, total: int) -> None:
        first_chunk.set()
        clicked.wait(10)

    widget.run_panel.progress.connect(hold, Qt.ConnectionType.DirectConnection)
    qtbot.mouseClick(widget.run_panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(first_chunk.is_set, timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(widget.run_panel.cancel_button, Qt.MouseButton.LeftButton)
    clicked.set()
    wait_idle(qtbot, widget)
    widget.run_panel.progress.disconnect(hold)

    assert isinstance(widget.run_panel.last_error, Cancelled)
    assert "Cancelled" in widget.run_panel.status_label.text()
    assert read_status(out) != "complete"
    done = len(list((out / PROGRESS_DIR).iterdir()))
    assert 1 <= done < 48, done
    # the overlay appeared while the run was going, with the chunks written so far
    [overlay] = [lyr for lyr in viewer.layers if lyr.metadata.get("wsi_infer", {}).get("kind") == "overlay"]
    partial = np.asarray(overlay.data[0] if overlay.multiscale else overlay.data)[:375, :500]
    np.testing.assert_array_equal(partial, stored_after(out))
    assert np.count_nonzero(partial) > 0

    # running again resumes the incomplete output, completes it and refreshes the layer
    qtbot.mouseClick(widget.run_panel.run_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.run_panel.last_error is None and read_status(out) == "complete"
    assert widget.run_panel.last_summary is not None and widget.run_panel.last_summary.chunks_run <= 48 - done
    final = np.asarray(overlay.data[0] if overlay.multiscale else overlay.data)[:375, :500]
    np.testing.assert_array_equal(final, stored_after(out))
    assert np.count_nonzero(final) > np.count_nonzero(partial)


def stored_after(out: Path) -> np.ndarray:
    """Level 0, class 0 of an overlay as it is on disk now."""
    return np.asarray(zarr.open_array(str(out / "0"), mode="r")[0])


def test_field_of_view_run(make_napari_viewer, qtbot, slide_path: Path, model: str,
                           overlay_path: Path) -> None:
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(slide_path), plugin=PLUGIN)
    [overlay] = viewer.open(str(overlay_path), plugin=PLUGIN)
    widget = open_widget(viewer)
    widget.run_panel.model_combo.setCurrentText(model)
    from napari_wsi_infer._fov import camera, canvas_size, visible_region

    camera(viewer).center = (700.0, 900.0)  # µm
    camera(viewer).zoom = 2.0  # screen pixels per µm

    rect = visible_region(viewer, slide)
    x, y, w, h = rect.x0, rect.y0, rect.width, rect.height
    ch, cw = canvas_size(viewer)
    assert abs(w - cw / 2.0 / 0.5) <= 2 and abs(h - ch / 2.0 / 0.5) <= 2
    assert abs(x + w / 2 - 1800) <= 1 and abs(y + h / 2 - 1400) <= 1

    qtbot.mouseClick(widget.run_panel.fov_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert widget.run_panel.last_error is None
    prediction = widget.run_panel.last_fov
    assert prediction is not None
    assert "Field of view:" in widget.run_panel.status_label.text() and " s (" in widget.run_panel.status_label.text()
    [region] = [lyr for lyr in viewer.layers if lyr.metadata.get("wsi_infer", {}).get("kind") == "region"]
    assert tuple(region.scale) == (prediction.mpp_y, prediction.mpp_x) == (4.0, 4.0)
    assert tuple(region.translate) == pytest.approx(
        ((4.0 - 0.5) / 2 + prediction.y0 * 4.0, (4.0 - 0.5) / 2 + prediction.x0 * 4.0))
    # the region covers the canvas and lands on the same pixels as the whole-slide overlay
    rh, rw = prediction.probabilities.shape[1:]
    assert prediction.x0 * 8 <= x and (prediction.x0 + rw) * 8 >= min(x + w, 4000)
    assert prediction.y0 * 8 <= y and (prediction.y0 + rh) * 8 >= min(y + h, 3000)
    for j, i in [(0, 0), (rh - 1, rw - 1), (rh // 2, rw // 3)]:
        np.testing.assert_allclose(overlay.world_to_data(world_of(region, (j, i))),
                                   [prediction.y0 + j, prediction.x0 + i])
    stored = zarr.open_array(str(overlay_path / "0"), mode="r")[
        0, prediction.y0 : prediction.y0 + rh, prediction.x0 : prediction.x0 + rw]
    fov = np.rint(prediction.probabilities[0] * 255)
    assert np.abs(fov - stored).max() <= 1
    # the review switched to the field of view; its mask appears when the threshold moves
    assert widget.review_panel.source_combo.currentText() == region.name
    assert f"{region.name} mask" not in viewer.layers
    widget.review_panel.threshold_slider.setValue(70)
    mask = viewer.layers[f"{region.name} mask"]
    np.testing.assert_array_equal(mask.data, prediction.probabilities[0] > 0.7)
    np.testing.assert_allclose(mask.data_to_world((5, 7)), region.data_to_world((5, 7)))


def test_multiscale_overlay_levels_are_exact(make_napari_viewer, tmp_path: Path) -> None:
    from test_plain import write_overlay

    level0 = write_overlay(tmp_path / "big.zarr", 2100, 1501, complete=True)
    viewer = make_napari_viewer()
    tumour, stroma = viewer.open(str(tmp_path / "big.zarr"), plugin=PLUGIN)
    assert tumour.name == "random: tumour" and stroma.name == "random: stroma"
    assert tumour.multiscale and len(tumour.data) == 3
    np.testing.assert_array_equal(tumour.downsample_factors, [[1, 1], [2, 2], [4, 4]])
    np.testing.assert_allclose(stroma.colormap.colors[-1], [31 / 255, 119 / 255, 180 / 255, 1])
    np.testing.assert_array_equal(np.asarray(stroma.data[0][:2100, :1501]), level0[1])
    # overlay pixel (r, c) covers slide pixels [4r, 4r + 4): centre at slide pixel 4r + 1.5
    np.testing.assert_allclose(tumour.data_to_world((1000, 700)), [(4000 + 1.5) * 0.5,
                                                                   (2800 + 1.5) * 0.5])
