"""Seeded fuzzing of slide files: truncations, header byte flips, tile-data flips and zeroed
offsets of real and synthetic slides.  Opening, describing and reading a damaged slide either
works or ends in a slide error that names the file (exit 2): never another exception."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import tifffile
from slides import SHARED_SLIDES, tissue_image, write_pyramid

from wsi_infer.cli import main
from wsi_infer.errors import SlideError
from wsi_infer.readers import open_slide

MUTATIONS_PER_KIND = 20
KINDS = ("truncate", "header", "tile", "zero-offset")


def _structure(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Byte ranges of the IFDs (with their tag values) and of the image data of a TIFF."""
    ifds, data = [], []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ends = [page.offset + 8]
            for tag in page.tags:  # type: ignore[union-attr]
                ends.append(tag.offset + 12)
                if tag.valueoffset != tag.offset + 8:
                    ends.append(tag.valueoffset + min(tag.count * 8, 4096))
            ifds.append((page.offset, max(ends)))  # type: ignore[union-attr]
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):  # type: ignore[union-attr]
                if count:
                    data.append((offset, offset + count))
    return ifds, data


def mutate(source: Path, target: Path, kind: str, rng: random.Random) -> None:
    raw = bytearray(source.read_bytes())
    ifds, data = _structure(source)
    if kind == "truncate":
        raw = raw[: rng.randrange(8, len(raw))]
    elif kind == "header":
        spans = [(0, 8), *ifds]
        for _ in range(rng.randint(1, 4)):
            a, b = rng.choice(spans)
            i = rng.randrange(a, min(b, len(raw)))
            raw[i] ^= 1 << rng.randrange(8)
    elif kind == "tile":
        for _ in range(rng.randint(1, 8)):
            a, b = rng.choice(data)
            i = rng.randrange(a, b)
            raw[i] = rng.randrange(256)
    else:  # zero a 4-byte field somewhere in an IFD: an offset, a count, a tag value
        a, b = rng.choice(ifds)
        i = rng.randrange(a, max(a + 1, b - 4))
        raw[i : i + 4] = b"\x00\x00\x00\x00"
    target.write_bytes(bytes(raw))


def use(path: Path) -> None:
    """What `wsi-infer info` and a run do first: open, metadata, a read at every level."""
    with open_slide(path) as slide:
        slide.info() if _has_mpp(slide) else None
        for level, (w, h) in enumerate(slide.level_dimensions):
            slide.read_region(level, max(0, w // 2 - 32), max(0, h // 2 - 32), 64, 64)


def _has_mpp(slide) -> bool:  # type: ignore[no-untyped-def]
    try:
        return slide.mpp is not None
    except ValueError:
        return False


def _sources(tmp: Path) -> list[Path]:
    synthetic = write_pyramid(tmp / "synthetic.svs", tissue_image(700, 900), mpp=0.5, svs=True)
    generic = write_pyramid(tmp / "generic.tif", tissue_image(600, 500), mpp=0.25)
    real = [SHARED_SLIDES / n for n in ("CMU-1-Small-Region.svs", "openslide-python_small.svs",
                                        "test3-DAPI-2-387.ndpi")]
    return [synthetic, generic, *(p for p in real if p.exists())]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_slides_are_slide_errors(tmp_path: Path, kind: str, capsys) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(f"wsi-infer-{kind}")
    failures = []
    for source in _sources(tmp_path):
        for n in range(MUTATIONS_PER_KIND):
            damaged = tmp_path / f"{source.stem}-{kind}-{n}{source.suffix}"
            mutate(source, damaged, kind, rng)
            try:
                use(damaged)
            except SlideError as exc:
                assert str(damaged) in str(exc)
            except Exception as exc:  # noqa: BLE001 - the point of the test
                failures.append(f"{damaged.name}: {type(exc).__name__}: {exc}")
            code = main(["info", str(damaged), "--json"])
            if code not in (0, 2):
                failures.append(f"{damaged.name}: `wsi-infer info` exited {code}")
            capsys.readouterr()
            damaged.unlink()
    assert not failures, "\n".join(failures)


def test_mutations_do_damage(tmp_path: Path) -> None:
    """The fuzzing above is not vacuous: some damaged copies are refused, some still open."""
    source = write_pyramid(tmp_path / "s.svs", tissue_image(700, 900), mpp=0.5, svs=True)
    outcomes = set()
    rng = random.Random(0)
    for kind in KINDS:
        for n in range(6):
            damaged = tmp_path / f"d{kind}{n}.svs"
            mutate(source, damaged, kind, rng)
            try:
                use(damaged)
                outcomes.add("opened")
            except SlideError:
                outcomes.add("refused")
    assert outcomes == {"opened", "refused"}
    shutil.rmtree(tmp_path, ignore_errors=True)
