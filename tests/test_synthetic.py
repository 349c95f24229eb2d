"""Tests for wsi_infer.synthetic: synthetic slides read back through OpenSlide and tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from scipy import ndimage

from wsi_infer.synthetic import BLACK_BAND, make_slide, render_region, tissue_truth

W, H = 3000, 2000
#: Mean absolute difference allowed between JPEG-decoded pixels and the rendered ones.
JPEG_TOLERANCE = 4.0


def render(x: int, y: int, w: int, h: int, **kwargs: object) -> np.ndarray:
    return render_region(x, y, w, h, slide_width=W, slide_height=H, **kwargs)  # type: ignore[arg-type]


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor, 3)
    mean: np.ndarray = blocks.mean(axis=(1, 3))
    return mean


def pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The pages of the main IFD chain (never TiffFrames: every page here has its own tags)."""
    result = list(tif.pages)
    assert all(isinstance(page, tifffile.TiffPage) for page in result)
    return result  # type: ignore[return-value]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small slide of each kind, plus an svs without mpp and one with black padding."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "svs": make_slide(root / "a.svs", width=W, height=H, kind="svs"),
        "tiff": make_slide(root / "a.tiff", width=W, height=H, kind="tiff"),
        "ome-tiff": make_slide(root / "a.ome.tiff", width=W, height=H, kind="ome-tiff"),
        "svs-no-mpp": make_slide(root / "b.svs", width=600, height=400, mpp=None),
        "tiff-no-mpp": make_slide(root / "b.tiff", width=600, height=400, kind="tiff", mpp=None),
        "ome-no-mpp": make_slide(
            root / "b.ome.tiff", width=600, height=400, kind="ome-tiff", mpp=None
        ),
        "svs-black": make_slide(root / "c.svs", width=W, height=H, background="black"),
    }


# --------------------------------------------------------------------------- content


def test_render_is_piecewise_identical() -> None:
    # crosses the internal 256 x 2048 render blocks and both nucleus grids at odd offsets
    x, y, w, h = 377, 141, 2300, 700
    whole = render(x, y, w, h)
    assert whole.shape == (h, w, 3) and whole.dtype == np.uint8
    pieces = np.concatenate(
        [
            np.concatenate([render(x + x0, y + y0, x1 - x0, y1 - y0) for x0, x1 in cols], axis=1)
            for y0, y1 in ((0, 13), (13, 300), (300, h))
            for cols in [((0, 1), (1, 999), (999, w))]
        ],
        axis=0,
    )
    np.testing.assert_array_equal(pieces, whole)


def test_render_is_deterministic_in_seed_and_mpp() -> None:
    a = render(1000, 800, 300, 200, seed=3)
    np.testing.assert_array_equal(a, render(1000, 800, 300, 200, seed=3))
    assert not np.array_equal(a, render(1000, 800, 300, 200, seed=4))
    assert not np.array_equal(a, render(1000, 800, 300, 200, seed=3, mpp=0.5))


def test_content_looks_like_h_and_e() -> None:
    image = render(0, 0, W, H)[2::4, 2::4].astype(np.int32)
    truth = tissue_truth(W, H, shape=(H // 4, W // 4))
    glass = image[~truth]
    assert np.all((glass.mean(axis=0) > 233) & (glass.mean(axis=0) < 246))
    assert glass.std(axis=0).max() < 5  # slight noise
    tissue = image[truth]
    red, green, blue = tissue.mean(axis=0)
    assert red > green + 30 and blue > green + 20  # pink eosin
    # purple hematoxylin nuclei: dark, blue above green
    nuclei = (tissue.sum(axis=1) < 330) & (tissue[:, 2] > tissue[:, 1] + 30)
    assert 0.01 < nuclei.mean() < 0.4


def test_nucleus_size_follows_mpp() -> None:
    def median_nucleus_diameter_um(mpp: float) -> float:
        image = render(1000, 500, 1000, 1000, mpp=mpp)
        labels, count = ndimage.label(image[:, :, 0] < 150)  # hematoxylin: red is absorbed
        assert count > 20
        areas = np.bincount(labels.ravel())[1:]
        return float(np.sqrt(4 * np.median(areas) / np.pi)) * mpp

    # nuclei are 6-10 µm across (a bit less where they are pale) whatever the resolution
    for mpp in (0.25, 0.5):
        assert 5.0 < median_nucleus_diameter_um(mpp) < 9.0


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_tissue_truth_fraction_and_agreement(fraction: float) -> None:
    truth = tissue_truth(W, H, shape=(100, 150), tissue_fraction=fraction)
    assert truth.shape == (100, 150) and truth.dtype == np.bool_
    assert abs(truth.mean() - fraction) < 0.1
    # the rendered slide is coloured exactly where the truth says tissue (holes aside)
    image = render(0, 0, W, H, tissue_fraction=fraction)
    coloured = block_mean(image, 20).astype(np.float64)
    saturated = coloured.max(axis=2) - coloured.min(axis=2) > 15
    assert (saturated == truth).mean() > 0.85


def test_black_background() -> None:
    image = render(0, 0, W, H, background="black")
    band_w, band_h = round(BLACK_BAND * W), round(BLACK_BAND * H)
    assert not image[:, W - band_w :].any() and not image[H - band_h :].any()
    assert (image[: H - band_h, : W - band_w].min(axis=2) > 0).all()
    # regions are consistent with the whole
    np.testing.assert_array_equal(
        render(2800, 1850, 200, 150, background="black"), image[1850:, 2800:]
    )


# --------------------------------------------------------------------------- files


def test_svs_opens_in_openslide_as_aperio(slides: dict[str, Path]) -> None:
    with openslide.OpenSlide(slides["svs"]) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.level_dimensions == ((3000, 2000), (750, 500), (187, 125))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert max(slide.associated_images["thumbnail"].size) <= 768

        region = np.asarray(slide.read_region((1000, 700), 0, (512, 512)).convert("RGB"))
        expected = render(1000, 700, 512, 512)
        assert mean_abs_diff(region, expected) < JPEG_TOLERANCE
        # colours survive the JPEG round trip (no channel swap or YCbCr mix-up)
        assert np.abs(region.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 1.5

        level1 = np.asarray(slide.read_region((1000, 700), 1, (128, 128)).convert("RGB"))
        assert mean_abs_diff(level1, block_mean(render(1000, 700, 512, 512), 4)) < JPEG_TOLERANCE


def test_svs_layout(slides: dict[str, Path]) -> None:
    with tifffile.TiffFile(slides["svs"]) as tif:
        svs = pages(tif)
        assert [page.shape[:2] for page in svs] == [
            (2000, 3000),
            (500, 750),
            (500, 750),
            (125, 187),
        ]
        assert [page.is_tiled for page in svs] == [True, False, True, True]
        assert not any(page.subifds for page in svs)
        assert svs[0].description.startswith(
            "Aperio Image Library v12.0.15 \n3000x2000 [0,0 3000x2000] (256x256) JPEG Q=85|"
        )
        assert "|MPP = 0.25|" in svs[0].description
        assert svs[2].description.endswith("3000x2000 -> 750x500 - |AppMag = 40|MPP = 0.25")
        np.testing.assert_array_less(
            mean_abs_diff(svs[0].asarray()[700:1212, 1000:1512], render(1000, 700, 512, 512)),
            JPEG_TOLERANCE,
        )


@pytest.mark.parametrize("kind", ["tiff", "ome-tiff"])
def test_generic_and_ome_tiff_pyramids(slides: dict[str, Path], kind: str) -> None:
    with tifffile.TiffFile(slides[kind]) as tif:
        assert tif.is_ome == (kind == "ome-tiff")
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [
            (2000, 3000, 3),
            (1000, 1500, 3),
            (500, 750, 3),
            (250, 375, 3),
        ]
        page = pages(tif)[0]
        assert page.is_tiled and page.tilewidth == page.tilelength == 256
        assert len(page.subifds or ()) == 3
        if kind == "tiff":
            assert not page.description
        tags = page.tags
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = tags["XResolution"].value
        assert 1e4 * denominator / numerator == pytest.approx(0.25)
        if kind == "ome-tiff":
            pixels = tif.ome_metadata
            assert pixels is not None
            assert 'PhysicalSizeX="0.25"' in pixels and 'PhysicalSizeXUnit="µm"' in pixels

        region = levels[0].asarray()[700:1212, 1000:1512]
        assert mean_abs_diff(region, render(1000, 700, 512, 512)) < JPEG_TOLERANCE
        level2 = levels[2].asarray()[175:303, 250:378]
        assert mean_abs_diff(level2, block_mean(render(1000, 700, 512, 512), 4)) < JPEG_TOLERANCE


def test_no_mpp_writes_no_physical_size(slides: dict[str, Path]) -> None:
    with openslide.OpenSlide(slides["svs-no-mpp"]) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert "openslide.mpp-x" not in slide.properties
    with tifffile.TiffFile(slides["svs-no-mpp"]) as tif:
        assert "MPP" not in pages(tif)[0].description
    with tifffile.TiffFile(slides["tiff-no-mpp"]) as tif:
        assert pages(tif)[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
    with tifffile.TiffFile(slides["ome-no-mpp"]) as tif:
        assert "PhysicalSizeX" not in (tif.ome_metadata or "")


def test_black_padding_in_file(slides: dict[str, Path]) -> None:
    with openslide.OpenSlide(slides["svs-black"]) as slide:
        corner = np.asarray(slide.read_region((2880, 1920), 0, (120, 80)).convert("RGB"))
    assert corner.max() < 8


def test_min_level_size_and_tile(tmp_path: Path) -> None:
    path = make_slide(
        tmp_path / "s.tiff", width=1000, height=600, kind="tiff", tile=128, min_level_size=300
    )
    with tifffile.TiffFile(path) as tif:
        assert [level.shape[:2] for level in tif.series[0].levels] == [
            (600, 1000),
            (300, 500),
            (150, 250),
        ]
        assert pages(tif)[0].tilewidth == 128


@pytest.mark.parametrize(
    "options",
    [{"tile": 100}, {"kind": "png"}, {"mpp": 0.0}, {"jpeg_quality": 0}, {"width": 0}],
)
def test_invalid_options_raise(tmp_path: Path, options: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"width": 512, "height": 512, **options}
    with pytest.raises(ValueError):
        make_slide(tmp_path / "x.svs", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x.svs").exists()
