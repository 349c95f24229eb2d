from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from slides import SHARED_SLIDES, shared_slide, tissue_image, write_pyramid

from wsi_infer.errors import SlideNotFoundError, SlideOpenError
from wsi_infer.readers import open_slide


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_generic_tiff_both_readers(tiff_slide: tuple[Path, np.ndarray], reader: str) -> None:
    path, rgb = tiff_slide
    with open_slide(path, reader) as slide:  # type: ignore[arg-type]
        assert slide.dimensions == (1400, 1000)
        if reader == "tifffile":  # OpenSlide's generic-tiff driver ignores SubIFD pyramids
            assert len(slide.level_dimensions) == 3
            assert slide.level_dimensions[1] == (700, 500)
            assert slide.level_downsamples[1] == pytest.approx(2.0)
        assert slide.mpp is not None and slide.mpp.x == pytest.approx(0.5)
        region = slide.read_region(0, 100, 200, 300, 150)
        np.testing.assert_array_equal(region, rgb[200:350, 100:400])  # lossless: exact


def test_auto_reads_tiff_layouts_with_tifffile(
    tiff_slide: tuple[Path, np.ndarray], svs_slide: tuple[Path, np.ndarray]
) -> None:
    with open_slide(tiff_slide[0]) as slide:
        assert slide.name == "tifffile"
        assert slide.mpp is not None and slide.mpp.source.startswith("TIFF XResolution")
    with open_slide(svs_slide[0]) as slide:
        assert slide.name == "tifffile" and slide.vendor == "aperio"
        assert slide.mpp is not None and slide.mpp.x == pytest.approx(0.5)


def test_svs_pixels_match_through_both_readers(svs_slide: tuple[Path, np.ndarray]) -> None:
    path, rgb = svs_slide
    a = open_slide(path, "openslide").read_region(0, 0, 0, 400, 300).astype(int)
    b = open_slide(path, "tifffile").read_region(0, 0, 0, 400, 300).astype(int)
    assert np.abs(a - b).max() <= 2  # same JPEG, two decoders
    assert np.abs(a - rgb[:300, :400]).mean() < 3  # JPEG q95


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_outside_the_slide_reads_as_white(tiff_slide: tuple[Path, np.ndarray], reader: str) -> None:
    path, rgb = tiff_slide
    region = open_slide(path, reader).read_region(0, 1350, 950, 100, 100)  # type: ignore[arg-type]
    np.testing.assert_array_equal(region[:50, :50], rgb[950:, 1350:])
    assert (region[50:, :] == 255).all() and (region[:, 50:] == 255).all()


def test_no_mpp_metadata_is_none(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "nompp.tif", np.zeros((300, 300, 3), np.uint8), mpp=None)
    assert open_slide(path).mpp is None


def test_bad_paths_name_the_file_and_problem(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match=r"missing\.svs: no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideOpenError, match="is a directory"):
        open_slide(tmp_path)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideOpenError, match=r"empty\.svs: the file is empty"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "notes.svs").write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideOpenError, match=r"notes\.svs: not a slide"):
        open_slide(tmp_path / "notes.svs")


@pytest.mark.realdata
@pytest.mark.parametrize("name,vendor,size,mpp", [
    ("CMU-1-Small-Region.svs", "aperio", (2220, 2967), 0.499),
    ("test3-DAPI-2-387.ndpi", "hamamatsu", (3968, 4864), 0.22818),
    ("multi_frame_jpeg2000_camelyon_challenge_image.dcm", "dicom", (1696, 812), 28.969),
    ("openslide-python_small.svs", "aperio", (16, 16), 0.499),
])
def test_real_slides_open(name: str, vendor: str, size: tuple[int, int], mpp: float) -> None:
    with open_slide(shared_slide(name)) as slide:
        assert slide.vendor == vendor
        assert slide.dimensions == size
        assert slide.mpp is not None and slide.mpp.x == pytest.approx(mpp, rel=1e-3)
        w, h = slide.level_dimensions[-1]
        region = slide.read_region(len(slide.level_dimensions) - 1, 0, 0, min(w, 64), min(h, 64))
        assert region.dtype == np.uint8 and region.shape == (min(h, 64), min(w, 64), 3)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "test3-DAPI-2-387.ndpi"])
def test_real_tiff_slides_read_identically_with_both_readers(name: str) -> None:
    path = shared_slide(name)
    with open_slide(path, "openslide") as a, open_slide(path, "tifffile") as b:
        assert a.vendor == b.vendor
        assert a.mpp is not None and b.mpp is not None and abs(a.mpp.x - b.mpp.x) < 1e-6
        for level in range(min(len(a.level_dimensions), len(b.level_dimensions))):
            assert a.level_dimensions[level] == b.level_dimensions[level]
            w, h = a.level_dimensions[level]
            np.testing.assert_array_equal(a.read_region(level, 0, 0, w, h), b.read_region(level, 0, 0, w, h))
    with open_slide(path) as auto:
        assert auto.name == "tifffile"


@pytest.mark.realdata
def test_real_nonconformant_dicom_is_a_clear_error() -> None:
    path = shared_slide("pathml_small_dicom.dcm")
    with pytest.raises(SlideOpenError, match="pathml_small_dicom.dcm: not a slide"):
        open_slide(path)


def test_shared_dir_constant_points_at_slides() -> None:
    assert SHARED_SLIDES.name == "slides"


@pytest.mark.parametrize("layout", ["zlib-rgb", "jpeg-svs", "rgba", "missing-tile", "odd-size"])
def test_tile_decoder_equals_the_zarr_view(tmp_path: Path, layout: str) -> None:
    """Tiled RGB(A) pages are decoded tile by tile; the result must equal tifffile's zarr view
    everywhere, including partial edge tiles and tiles the writer never stored."""
    from wsi_infer.readers.tifffile_reader import TiffFileReader

    height, width = (517, 389) if layout == "odd-size" else (640, 512)
    rgb = tissue_image(height, width, seed=3)
    path = tmp_path / "s.tif"
    if layout == "jpeg-svs":
        write_pyramid(path, rgb, mpp=0.5, svs=True, tile=128)
    elif layout == "rgba":
        rgba = np.concatenate([rgb, np.full((height, width, 1), 200, np.uint8)], axis=2)
        tifffile.imwrite(path, rgba, tile=(128, 128), photometric="rgb", extrasamples=[2],
                         compression="zlib", metadata=None)
    elif layout == "missing-tile":
        def tiles():  # a generator yielding None leaves that tile unwritten (byte count 0)
            for i in range(height // 128):
                for j in range(width // 128):
                    yield None if (i, j) == (2, 1) else np.ascontiguousarray(
                        rgb[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128])
        tifffile.imwrite(path, tiles(), shape=rgb.shape, dtype=np.uint8, tile=(128, 128),
                         photometric="rgb", compression="zlib", metadata=None)
    else:
        write_pyramid(path, rgb, mpp=0.5, tile=128)
    reader = TiffFileReader(path)
    assert reader._tiled[0] is not None  # the tile decoder is the path under test
    for x, y, w, h in [(0, 0, width, height), (37, 51, 200, 300), (127, 127, 2, 2),
                       (width - 70, height - 90, 70, 90), (300, 250, 1, 1)]:
        fast = reader.read_region(0, x, y, w, h)
        slow = reader._read_zarr(0, x, y, x + w, y + h)
        np.testing.assert_array_equal(fast, slow, err_msg=f"{layout} region {(x, y, w, h)}")
    reader.close()
