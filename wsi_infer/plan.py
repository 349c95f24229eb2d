"""Plan a run: the one place that decides which pixels a run reads and computes.

:func:`plan_run` turns a slide, a model card and the run options into a :class:`RunPlan`: the
slide's mpp, the pyramid level and resampling, the tile grid, the tissue mask, the chunks to
compute and the run key.  A whole-slide run, a region prediction (napari, ``predict_region``)
and the service all plan through it, so they read and compute the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .backends import BackendName
from .errors import MissingMppError, RegionError, SlideError
from .models import DEFAULT_MODEL, BareModel, ModelCard
from .overlay import FORMAT_VERSION, OutputDtype
from .provenance import slide_fingerprint
from .readers import Mpp, ReaderName, SlideReader, parse_mpp
from .rect import Rect
from .resolution import RESAMPLING_VERSION, LevelPlan, plan_level, read_target
from .tiling import Geometry, geometry_for
from .tissue import TISSUE_VERSION, TissueMask

#: No scanner makes slides wider or taller than this (a 2.5 m slide at 0.25 µm/px).
MAX_SLIDE_SIDE = 10_000_000
#: A slide may be at most this many times coarser than the model's mpp (it is then upsampled).
MAX_UPSAMPLING = 8.0


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run besides the slide and the output path."""

    model: str = DEFAULT_MODEL
    bare_model: BareModel | None = None  # what a card would say, for a bare .onnx / .pt file
    backend: BackendName = "onnxruntime"
    device: str = "cpu"
    batch_size: int | None = None  # None: the device's default (Predictor.batch_size)
    threads: int | None = None
    fp16: bool = False
    mpp: float | None = None
    reader: ReaderName = "auto"
    tissue_mask: bool = True
    tile_size: int | None = None
    halo: int | None = None
    chunk_size: int = 2048
    dtype: OutputDtype = "uint8"
    workers: int = 2
    overwrite: bool = False


@dataclass(frozen=True)
class RunPlan:
    """What a run reads and computes (picklable: it travels to Dask workers)."""

    slide_path: Path
    fingerprint: str  # of the slide file (wsi_infer.provenance.slide_fingerprint)
    reader: str  # the reader that opened the slide ("tifffile", "openslide")
    mpp: Mpp  # the slide's level-0 µm/px
    level: LevelPlan  # the pyramid level read and its resampling to the model's mpp
    geometry: Geometry  # tiles and chunks on the target image
    card: ModelCard
    options: RunOptions
    key: str  # hash of everything that decides the output's pixels
    tissue: TissueMask | None = None  # None: every tile runs

    def with_tissue(self, tissue: TissueMask | None) -> RunPlan:
        """This plan, computing only where ``tissue`` has tissue."""
        return replace(self, tissue=tissue)

    def has_tissue(self, region: Rect) -> bool:
        """Whether the output pixels of ``region`` hold tissue (always, without a mask)."""
        return self.tissue is None or self.tissue.any_in(region, self.level.mpp_x, self.level.mpp_y)

    def chunk_has_tissue(self, cy: int, cx: int) -> bool:
        """Whether chunk ``(cy, cx)``, or a tile that reaches into it, holds tissue."""
        return self.has_tissue(self.geometry.reach(self.geometry.chunk_region(cy, cx)))

    def chunks(self) -> list[tuple[int, int]]:
        """The chunks to compute: those with tissue."""
        return [c for c in self.geometry.chunks() if self.chunk_has_tissue(*c)]

    def tiles_to_run(self, chunks: list[tuple[int, int]]) -> int:
        """How many tiles computing ``chunks`` runs (tiles of theirs that hold tissue)."""
        g = self.geometry
        return sum(self.has_tissue(g.footprint(t)) for c in chunks for t in g.tiles_for(g.chunk_region(*c)))

    def read(self, slide: SlideReader, rect: Rect) -> np.ndarray:
        """Target-resolution pixels of ``rect`` (float32 RGB)."""
        return read_target(slide, self.level, rect)

    def output_rect(self, region: Rect) -> Rect:
        """The output pixels covering a level-0 rectangle, clipped to the image."""
        lv, mpp = self.level, self.mpp
        rect = Rect(math.floor(region.x0 * mpp.x / lv.mpp_x), math.floor(region.y0 * mpp.y / lv.mpp_y),
                    math.ceil(region.x1 * mpp.x / lv.mpp_x), math.ceil(region.y1 * mpp.y / lv.mpp_y))
        inside = rect.clipped(lv.width, lv.height)
        if inside.empty:
            raise RegionError(f"region x={region.x0} y={region.y0} {region.width}x{region.height} "
                              "lies outside the slide")
        return inside


def plan_run(slide: SlideReader, card: ModelCard, options: RunOptions, *,
             tissue: TissueMask | None = None, fingerprint: str | None = None) -> RunPlan:
    """Plan ``card`` over ``slide`` with ``options``: mpp, level, checks, tile grid, run key.

    The tissue mask is given (``tissue``) or added later with :meth:`RunPlan.with_tissue`
    (a run checks its key before it spends time detecting tissue).  ``fingerprint``: the
    slide's, when the caller has it (:meth:`~wsi_infer.resources.Resources.fingerprint`)."""
    mpp = resolve_mpp(slide, options.mpp)
    _check_dimensions(slide)
    level = plan_level(slide, mpp, card.mpp)
    _check_upsampling(slide, mpp, card, level)
    geometry = geometry_for(card, level.height, level.width, tile_size=options.tile_size,
                            halo=options.halo, chunk_size=options.chunk_size)
    fingerprint = fingerprint or slide_fingerprint(slide.path)
    key = run_key(card, fingerprint, slide.name, mpp, level, geometry, options)
    return RunPlan(slide.path, fingerprint, slide.name, mpp, level, geometry, card, options, key,
                   tissue)


def run_key(card: ModelCard, fingerprint: str, reader: str, mpp: Mpp, level: LevelPlan,
            geometry: Geometry, options: RunOptions) -> str:
    """A hash of everything that decides the output's pixels: same key, same overlay.

    The whole card (its canonical JSON: weights, preprocessing, mpp, classes, activation... and,
    for a bare model file, the flags that stand in for a card), the slide and the reader, the
    level and resampling (with the resampling code's version), the tile grid, the tissue mask
    (with the detector's version), the stored dtype, the runtime (backend, device kind, fp16)
    and the overlay format."""
    shaping = {
        "card": card.content_sha256, "slide": fingerprint, "reader": reader,
        "mpp": [mpp.x, mpp.y], "level": asdict(level), "resampling": RESAMPLING_VERSION,
        "geometry": {"mode": geometry.mode, "chunk_tiles": geometry.chunk_tiles,
                     "y": asdict(geometry.y), "x": asdict(geometry.x)},
        "tissue": TISSUE_VERSION if options.tissue_mask else None, "dtype": options.dtype,
        "runtime": {"backend": options.backend, "device": options.device.split(":")[0],
                    "fp16": options.fp16},
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def resolve_mpp(slide: SlideReader, override: float | None) -> Mpp:
    """The slide's mpp: ``override`` if given, else its metadata; a clear error if neither."""
    if override is not None:
        try:
            mpp = parse_mpp(override, override, source="--mpp")
        except ValueError as exc:
            raise MissingMppError(f"{slide.path}: invalid --mpp: {exc}") from exc
        assert mpp is not None
        return mpp
    try:
        mpp = slide.mpp
    except ValueError as exc:
        raise MissingMppError(f"{slide.path}: the slide's mpp metadata is invalid ({exc}); "
                              "pass the real value with --mpp MICRONS_PER_PIXEL") from exc
    if mpp is None:
        raise MissingMppError(
            f"{slide.path}: the slide has no microns-per-pixel (mpp) in its metadata; pass it with"
            " --mpp MICRONS_PER_PIXEL (e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)"
        )
    return mpp


def _check_dimensions(slide: SlideReader) -> None:
    width, height = slide.dimensions
    if width <= 0 or height <= 0 or width > MAX_SLIDE_SIDE or height > MAX_SLIDE_SIDE:
        raise SlideError(f"{slide.path}: implausible slide dimensions {width}x{height} px")


def _check_upsampling(slide: SlideReader, mpp: Mpp, card: ModelCard, plan: LevelPlan) -> None:
    factor = 1 / min(plan.factor_x, plan.factor_y)
    if factor > MAX_UPSAMPLING:
        raise SlideError(
            f"{slide.path}: the slide ({max(mpp.x, mpp.y):.3g} µm/px) is {factor:.0f}x coarser than "
            f"model {card.name!r} needs ({card.mpp:g} µm/px); upsampling more than "
            f"{MAX_UPSAMPLING:g}x would only invent detail. Use a model for this resolution, or "
            "check the slide's mpp (--mpp)")
