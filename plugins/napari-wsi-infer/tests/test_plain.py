"""The functions behind the widget, without a viewer: pyramids, overlays, areas, export."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
import zarr
from raster import iou, rasterize
from wsi_infer.readers import open_slide

from napari_wsi_infer import (
    IncompleteOverlayError,
    class_areas_mm2,
    from_overlay,
    mask_polygons,
    open_overlay,
    write_geojson,
    write_thumbnail,
)
from napari_wsi_infer._pyramid import halving_pyramid, integer_levels, slide_pyramid
from napari_wsi_infer._reader import get_overlay_reader, get_slide_reader


def test_integer_levels_keep_exact_factors() -> None:
    assert integer_levels([1.0, 4.0, 16.02139]) == [(0, 1), (1, 4), (2, 16)]
    assert integer_levels([1.0, 2.5, 4.0001]) == [(0, 1), (2, 4)]  # 2.5× cannot be exact


def test_slide_pyramid_is_lazy_exact_and_reads_the_slide(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        levels = slide_pyramid(slide, name="test")
        assert [a.shape for a in levels] == [(3008, 4000, 3), (752, 1000, 3), (188, 250, 3)]
        for k, factor in enumerate((1, 4, 16)):
            assert levels[0].shape[0] == levels[k].shape[0] * factor
            assert levels[0].shape[1] == levels[k].shape[1] * factor
        region = np.asarray(levels[0][1000:1100, 2000:2300])
        np.testing.assert_array_equal(region, slide.read_region(0, 2000, 1000, 300, 100))
        np.testing.assert_array_equal(np.asarray(levels[1][100:200, 900:1000]),
                                      slide.read_region(1, 900, 100, 100, 100))
        assert (np.asarray(levels[0][3000:]) == 255).all()  # padding reads as glass


def test_halving_pyramid_pads_to_exact_factors() -> None:
    import dask.array as da

    levels = [da.ones((2, 375, 501)), da.ones((2, 188, 251)), da.ones((2, 94, 126))]
    padded = halving_pyramid(levels)
    assert [a.shape for a in padded] == [(2, 376, 504), (2, 188, 252), (2, 94, 126)]
    assert float(padded[0][:, 375:].sum()) == 0.0


def test_reader_dispatch(slide_path: Path, overlay_path: Path, tmp_path: Path) -> None:
    assert get_slide_reader(str(slide_path)) is not None
    assert get_slide_reader(str(tmp_path / "missing.svs")) is None
    (tmp_path / "not-a-slide.tif").write_bytes(b"hello")
    assert get_slide_reader(str(tmp_path / "not-a-slide.tif")) is None
    assert get_overlay_reader(str(overlay_path)) is not None
    assert get_overlay_reader(str(tmp_path)) is None
    assert get_overlay_reader(str(slide_path)) is None


def test_incomplete_overlay_is_refused(overlay_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(overlay_path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["wsi_infer"] = {**group.attrs["wsi_infer"], "status": "running"}
    with pytest.raises(IncompleteOverlayError, match="incomplete.*'running'"):
        open_overlay(copy)
    assert open_overlay(copy, allow_incomplete=True).status == "running"


def test_overlay_geometry_and_areas(overlay_path: Path) -> None:
    info = open_overlay(overlay_path)
    assert info.scale == (4.0, 4.0) and info.translate == (1.75, 1.75)
    pmap = from_overlay(info)
    assert pmap.origin == (0.0, 0.0) and pmap.factor == (8.0, 8.0)
    stored = np.asarray(zarr.open_array(str(overlay_path / "0"), mode="r")[...])
    areas = class_areas_mm2(pmap, 0.5)
    expected = float((stored[0] / 255.0 > 0.5).sum()) * 16.0 / 1e6
    assert areas["tissue"] == pytest.approx(expected, rel=1e-9)
    assert areas["any class"] == pytest.approx(expected, rel=1e-9)
    assert 0.1 < expected < 6.0 * 0.5  # some tissue, less than the slide (6 mm²)


def test_mask_polygons_are_exact_with_holes_and_islands() -> None:
    mask = np.zeros((60, 80), bool)
    mask[5:55, 5:75] = True
    mask[15:45, 20:60] = False  # a hole
    mask[25:35, 30:50] = True  # an island in the hole
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours
    polygons = mask_polygons(mask)
    assert sum(p.area for p in polygons) == mask.sum()
    assert any(len(p.interiors) == 1 for p in polygons)
    assert all(p.is_valid for p in polygons)
    features = [{"geometry": shapely.geometry.mapping(p)} for p in polygons]
    drawn = rasterize(features, lambda xy: (xy[:, 1], xy[:, 0]), mask.shape)
    assert iou(drawn, mask) == 1.0


def test_geojson_export_matches_threshold(overlay_path: Path, tmp_path: Path) -> None:
    pmap = from_overlay(overlay_path)
    count = write_geojson(tmp_path / "out.geojson", pmap, 0.5)
    data = json.loads((tmp_path / "out.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == count > 0
    for feature in data["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"] == {"name": "tissue",
                                                           "color": [44, 160, 44]}
        assert shapely.geometry.shape(feature["geometry"]).is_valid
    # coordinates are slide level-0 pixels: 8 per overlay pixel, inside the 4000 × 3000 slide
    xy = np.concatenate([np.asarray(r) for f in data["features"]
                         for r in f["geometry"]["coordinates"]])
    assert xy[:, 0].max() <= 4000 and xy[:, 1].max() <= 3000 and xy.min() >= 0
    assert np.all(xy % 8 == 0)

    def to_pixels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pmap.from_slide_pixels(points[:, 1], points[:, 0])

    drawn = rasterize(data["features"], to_pixels, pmap.shape)
    score = iou(drawn, pmap.mask(0, 0.5))
    print(f"GeoJSON round trip IoU: {score:.6f}")
    assert score > 0.95


def test_thumbnail_blends_overlay(slide_path: Path, overlay_path: Path, tmp_path: Path) -> None:
    from PIL import Image

    pmap = from_overlay(overlay_path)
    shape = write_thumbnail(tmp_path / "thumb.png", slide_path, pmap, max_side=400)
    assert shape == (300, 400)
    blended = np.asarray(Image.open(tmp_path / "thumb.png"))
    empty = dataclasses.replace(pmap, probabilities=np.zeros_like(pmap.probabilities))
    plain = write_thumbnail(tmp_path / "plain.png", slide_path, empty, max_side=400)
    assert plain == shape
    unblended = np.asarray(Image.open(tmp_path / "plain.png")).astype(int)
    changed = np.abs(blended.astype(int) - unblended).sum(axis=2) > 0
    # where the overlay says tissue, the thumbnail turned green
    tissue = np.asarray(Image.fromarray((pmap.probabilities[0] * 255).astype(np.uint8))
                        .resize((400, 300), Image.Resampling.NEAREST)) > 200
    assert changed[tissue].mean() > 0.9
    assert blended[tissue][:, 1].mean() > unblended[tissue][:, 1].mean()


def write_overlay(path: Path, height: int, width: int, *, complete: bool) -> np.ndarray:
    """A 2-class uint8 overlay of random probabilities at 2 µm/px on a 0.5 µm/px slide, written
    with wsi-infer's own writer; returns its level 0."""
    from wsi_infer.overlay import OverlaySpec, OverlayWriter

    spec = OverlaySpec(height=height, width=width, chunk=512, class_names=("tumour", "stroma"),
                       class_colors=("#d62728", "#1f77b4"), mpp_x=2.0, mpp_y=2.0,
                       slide_mpp_x=0.5, slide_mpp_y=0.5)
    writer = OverlayWriter.create(path, spec, {"model": {"name": "random"}})
    probabilities = np.random.default_rng(0).random((2, height, width), dtype=np.float32)
    writer.store_chunk(0, 0, probabilities)
    if complete:
        writer.build_pyramid()
        writer.set_status("complete")
    return np.asarray(zarr.open_array(str(path / "0"), mode="r")[...])


def test_live_pyramid_equals_the_final_one(tmp_path: Path) -> None:
    from wsi_infer.overlay import OverlayWriter

    from napari_wsi_infer._overlay import overlay_pyramid

    path = tmp_path / "live.zarr"
    write_overlay(path, 2100, 1501, complete=False)
    live = [np.asarray(a) for a in overlay_pyramid(open_overlay(path, allow_incomplete=True))]
    writer = OverlayWriter.open(path)
    writer.build_pyramid()
    writer.set_status("complete")
    final = [np.asarray(a) for a in overlay_pyramid(open_overlay(path))]
    assert [a.shape for a in final] == [(2, 2100, 1504), (2, 1050, 752), (2, 525, 376)]
    for a, b in zip(live, final, strict=True):
        np.testing.assert_array_equal(a, b)
