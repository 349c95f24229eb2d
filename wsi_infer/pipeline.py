"""One slide from file to OME-Zarr: open → mpp → level → tissue → tiles (Dask) → model → stitch → write.

Nothing here knows about the command line.  Every chunk is an independent Dask task that
reads its own window (chunk plus halo) straight from the slide, so a chunk without tissue is
never read, tasks share no data, and memory grows with the chunk size and the number of
workers, never with the slide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dask
import dask.threaded
import numpy as np
from dask.callbacks import Callback

from .backends import BackendName, create_backend
from .errors import Cancelled, MissingMppError, SlideError
from .models import DEFAULT_MODEL, BareModel, ModelCard, resolve_model
from .output import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_SKIPPED,
    OutputDtype,
    OverlaySpec,
    OverlayWriter,
    existing_run,
    forget_open_outputs,
    mark_chunk_done,
    store_chunk,
)
from .predictor import Predictor
from .provenance import now, slide_fingerprint, software
from .readers import Mpp, ReaderName, SlideReader, open_slide, parse_mpp
from .resolution import LevelPlan, plan_level, read_target
from .stitching import ChunkResult, predict_chunk
from .tiling import Geometry, geometry_for
from .tissue import TissueMask, detect_tissue

log = logging.getLogger("wsi_infer")

#: Called with (tiles done, tiles total) as chunks finish.
ProgressCallback = Callable[[int, int], None]


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
class RunSummary:
    """What a run did."""

    slide: str
    output: str
    tiles_run: int
    tiles_skipped: int
    chunks_run: int
    chunks_skipped: int
    seconds: float
    status: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles_run / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ChunkJob:
    """All a worker needs to compute and store chunks of one slide (picklable)."""

    slide_path: str
    reader: ReaderName
    plan: LevelPlan
    geometry: Geometry
    card: ModelCard
    backend: BackendName
    device: str
    threads: int | None
    fp16: bool
    batch_size: int
    tissue: TissueMask | None
    output_path: str
    dtype: OutputDtype


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


def plan_slide(slide: SlideReader, card: ModelCard, *, mpp: float | None = None,
               tile_size: int | None = None, halo: int | None = None,
               chunk_size: int = 2048) -> tuple[Mpp, LevelPlan, Geometry]:
    """The slide's mpp, the level plan for the model, and the tile grid: the one place that
    decides which pixels a run (whole slide, region or service request) reads and computes."""
    slide_mpp = resolve_mpp(slide, mpp)
    _check_dimensions(slide)
    plan = plan_level(slide, slide_mpp, card.mpp)
    _check_upsampling(slide, slide_mpp, card, plan)
    geometry = geometry_for(card, plan.height, plan.width, tile_size=tile_size, halo=halo,
                            chunk_size=chunk_size)
    return slide_mpp, plan, geometry


def default_output(slide_path: Path, model: str) -> Path:
    """``./<slide stem>.<model>.zarr`` in the working directory."""
    return Path.cwd() / f"{slide_path.stem}.{Path(model).stem}.zarr"


def run_slide(
    slide_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    options: RunOptions = RunOptions(),
    *,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    client: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Run ``options.model`` over a slide and write the overlay; returns a summary.

    With ``resume``, an existing output made with the same model and parameters is kept: if it
    is complete nothing is done (status ``"skipped"``), if not, only the chunks it lacks are
    computed.  ``client`` (a ``distributed.Client``) runs the chunks on a Dask cluster;
    without it they run on Dask's threaded scheduler with ``options.workers`` threads.
    ``should_stop`` is polled between chunks; when it returns true the run stops with
    :class:`Cancelled` and the output stays marked incomplete (it can be resumed).
    """
    started = time.perf_counter()
    slide_path = Path(slide_path)
    card = resolve_model(options.model, options.bare_model)
    out = Path(output) if output is not None else default_output(slide_path, card.name)
    timings: dict[str, float] = {}
    with open_slide(slide_path, options.reader) as slide:
        mpp, plan, geometry = plan_slide(slide, card, mpp=options.mpp, tile_size=options.tile_size,
                                         halo=options.halo, chunk_size=options.chunk_size)
        key = run_key(card, slide_fingerprint(slide_path), mpp, options)
        previous = existing_run(out) if resume else None
        if previous is not None and previous.get("run_key") == key and previous["status"] == STATUS_COMPLETE:
            log.info("%s: already complete in %s, skipped", slide_path, out)
            return RunSummary(str(slide_path), str(out), 0, 0, 0, 0, 0.0, STATUS_SKIPPED)
        # Load and try the model before writing anything: a bad model or device leaves no output.
        predictor = _cached_predictor(card, options.backend, options.device, options.threads,
                                      options.fp16)
        _probe_model(predictor, geometry)
        batch_size = predictor.batch_size(options.batch_size)
        t0 = time.perf_counter()
        tissue = detect_tissue(slide, mpp) if options.tissue_mask else None
        timings["tissue_s"] = time.perf_counter() - t0
        _warn_about_tissue(slide_path, tissue)
        job = ChunkJob(
            slide_path=str(slide_path), reader=options.reader, plan=plan, geometry=geometry,
            card=card, backend=options.backend, device=options.device,
            threads=options.threads, fp16=options.fp16, batch_size=batch_size,
            tissue=tissue, output_path=str(out), dtype=options.dtype,
        )
        chunks = list(geometry.chunks())
        tissue_chunks = [c for c in chunks if _chunk_has_tissue(job, *c)]
        if previous is not None and previous.get("run_key") == key:
            writer = OverlayWriter.open(out)
            done = writer.done_chunks()
            log.info("%s: resuming %s, %d of %d chunks already written", slide_path, out,
                     len(done & set(tissue_chunks)), len(tissue_chunks))
        else:
            spec = OverlaySpec(
                height=plan.height, width=plan.width, chunk=geometry.chunk,
                class_names=tuple(c.name for c in card.classes),
                class_colors=tuple(c.color for c in card.classes),
                mpp_x=plan.mpp_x, mpp_y=plan.mpp_y, slide_mpp_x=mpp.x, slide_mpp_y=mpp.y,
                dtype=options.dtype,
            )
            provenance = _provenance(slide, mpp, card, plan, geometry, options, tissue, batch_size)
            writer = OverlayWriter.create(out, spec, {**provenance, "run_key": key},
                                          overwrite=options.overwrite or resume)
            done = set()
        todo = [c for c in tissue_chunks if c not in done]
        try:
            t0 = time.perf_counter()
            results = _compute_chunks(job, todo, options.workers, progress, client, should_stop)
            timings["inference_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            writer.build_pyramid()
            timings["pyramid_s"] = time.perf_counter() - t0
        except BaseException as exc:
            _mark_failed(writer, exc)
            raise
        finally:
            _release(job)
        tiles_run = sum(r[0] for r in results)
        skipped_in_chunks = sum(r[1] for r in results)
        tiles_in_todo = sum(_tiles_in_chunk(geometry, *c) for c in todo)
        tiles_skipped = skipped_in_chunks + geometry.tiles_total - tiles_in_todo
        seconds = time.perf_counter() - started
        timings["total_s"] = seconds
        summary = RunSummary(
            slide=str(slide_path), output=str(out), tiles_run=tiles_run, tiles_skipped=tiles_skipped,
            chunks_run=len(todo), chunks_skipped=len(chunks) - len(todo), seconds=seconds,
            status=STATUS_COMPLETE, timings=timings,
        )
        writer.set_status(
            STATUS_COMPLETE, finished=now(),
            counts={"tiles_run": tiles_run, "tiles_skipped": tiles_skipped,
                    "chunks_run": summary.chunks_run, "chunks_skipped": summary.chunks_skipped,
                    "chunks_resumed": len(tissue_chunks) - len(todo)},
            timings={k: round(v, 3) for k, v in timings.items()},
        )
    return summary


def run_key(card: ModelCard, fingerprint: str, mpp: Mpp, options: RunOptions) -> str:
    """A hash of everything that determines the output's pixels: same key, same overlay."""
    shaping = {
        "model": card.sha256, "slide": fingerprint, "mpp": [mpp.x, mpp.y],
        "tissue_mask": options.tissue_mask, "tile_size": options.tile_size, "halo": options.halo,
        "chunk_size": options.chunk_size, "dtype": options.dtype,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


#: No scanner makes slides wider or taller than this (a 2.5 m slide at 0.25 µm/px).
MAX_SLIDE_SIDE = 10_000_000


def _check_dimensions(slide: SlideReader) -> None:
    width, height = slide.dimensions
    if width <= 0 or height <= 0 or width > MAX_SLIDE_SIDE or height > MAX_SLIDE_SIDE:
        raise SlideError(f"{slide.path}: implausible slide dimensions {width}x{height} px")


#: A slide may be at most this many times coarser than the model's mpp (it is then upsampled).
MAX_UPSAMPLING = 8.0


def _check_upsampling(slide: SlideReader, mpp: Mpp, card: ModelCard, plan: LevelPlan) -> None:
    factor = 1 / min(plan.factor_x, plan.factor_y)
    if factor > MAX_UPSAMPLING:
        raise SlideError(
            f"{slide.path}: the slide ({max(mpp.x, mpp.y):.3g} µm/px) is {factor:.0f}x coarser than "
            f"model {card.name!r} needs ({card.mpp:g} µm/px); upsampling more than "
            f"{MAX_UPSAMPLING:g}x would only invent detail. Use a model for this resolution, or "
            "check the slide's mpp (--mpp)")


def _probe_model(predictor: Predictor, geometry: Geometry) -> None:
    """Run the model once on a blank tile: a model whose output does not match its card (shape,
    range, NaN) fails here, before any output is written."""
    blank = np.full((1, geometry.y.tile, geometry.x.tile, 3), 255.0, np.float32)
    predictor.predict(blank)


def _warn_about_tissue(slide_path: Path, tissue: TissueMask | None) -> None:
    if tissue is None:
        return
    if not tissue.mask.any():
        log.warning("%s: no tissue found; the overlay will be empty (use --no-tissue-mask to run "
                    "everywhere)", slide_path)
    if tissue.modality == "fluorescence":
        log.warning("%s: looks like a fluorescence slide (dark background); brightfield models "
                    "may give meaningless results on it", slide_path)


def _mark_failed(writer: OverlayWriter, exc: BaseException) -> None:
    try:
        writer.set_status(STATUS_FAILED, error=f"{type(exc).__name__}: {exc}", finished=now())
    except Exception:  # noqa: BLE001 - the original error matters more than a failed status update
        log.warning("could not mark %s as failed", writer.path)


def _provenance(slide: SlideReader, mpp: Mpp, card: ModelCard, plan: LevelPlan, geometry: Geometry,
                options: RunOptions, tissue: TissueMask | None, batch_size: int) -> dict[str, Any]:
    predictor = _cached_predictor(card, options.backend, options.device, options.threads,
                                  options.fp16)
    return {
        "software": software(),
        "started": now(),
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256,
                  "card": str(card.path), "mpp": card.mpp,
                  "classes": [c.name for c in card.classes], "activation": card.activation},
        "slide": {"path": str(slide.path.resolve()), "fingerprint": slide_fingerprint(slide.path),
                  "reader": slide.name, "vendor": slide.vendor,
                  "width": slide.dimensions[0], "height": slide.dimensions[1],
                  "mpp_x": mpp.x, "mpp_y": mpp.y, "mpp_source": mpp.source},
        "output": {"mpp_x": plan.mpp_x, "mpp_y": plan.mpp_y, "width": plan.width,
                   "height": plan.height, "dtype": options.dtype,
                   "read_level": plan.level, "resample_factor": [plan.factor_y, plan.factor_x]},
        "tiling": {"mode": geometry.mode, "tile": geometry.y.tile, "stride": geometry.y.stride,
                   "halo": geometry.y.halo, "chunk": geometry.chunk,
                   "batch_size": batch_size},
        "runtime": {"backend": options.backend, "device": predictor.backend.describe(),
                    "threads": options.threads, "fp16": options.fp16, "workers": options.workers},
        "tissue": None if tissue is None else {
            "method": f"{tissue.modality} threshold + morphology", "fraction": round(tissue.fraction, 4),
            "mask_mpp": [tissue.mpp_y, tissue.mpp_x]},
    }


def _compute_chunks(job: ChunkJob, todo: list[tuple[int, int]], workers: int,
                    progress: ProgressCallback | None, client: Any = None,
                    should_stop: Callable[[], bool] | None = None) -> list[tuple[int, int]]:
    """Run the chunk tasks on a Dask cluster (``client``) or Dask's threaded scheduler,
    reporting progress in tiles."""
    total = sum(_tiles_in_chunk(job.geometry, *c) for c in todo)
    task = process_chunk if should_stop is None or client is not None else _stoppable(should_stop)
    # One graph node holds the job (tissue mask, plan...): tasks refer to it instead of each
    # carrying a copy, so a cluster receives it once per worker, not once per chunk.
    shared = dask.delayed(job, name=f"job-{job.output_path}")
    tasks = [dask.delayed(task, pure=False)(shared, cy, cx, dask_key_name=f"chunk-{cy}-{cx}-{job.output_path}")
             for cy, cx in todo]
    done = [0]

    def report(result: tuple[int, int]) -> None:
        done[0] += result[0] + result[1]
        if progress is not None:
            progress(done[0], total)

    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        results = []
        try:
            for future in as_completed(futures):
                results.append(future.result())
                report(results[-1])
                if should_stop is not None and should_stop():
                    raise Cancelled(f"{job.slide_path}: cancelled")
        finally:
            client.cancel(futures)
        return results

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(result, tuple):
            report(result)

    with Callback(posttask=posttask):
        # the scheduler function itself: naming it "threads" makes Dask import distributed (~1 s)
        return list(dask.compute(*tasks, scheduler=dask.threaded.get, num_workers=max(1, workers)))


def _stoppable(should_stop: Callable[[], bool]) -> Callable[[ChunkJob, int, int], tuple[int, int]]:
    def run(job: ChunkJob, cy: int, cx: int) -> tuple[int, int]:
        if should_stop():
            raise Cancelled(f"{job.slide_path}: cancelled")
        return process_chunk(job, cy, cx)

    return run


def process_chunk(job: ChunkJob, cy: int, cx: int) -> tuple[int, int]:
    """Compute chunk ``(cy, cx)`` and store it; returns (tiles run, tiles skipped)."""
    slide = _cached_slide(job.slide_path, job.reader)
    predictor = _cached_predictor(job.card, job.backend, job.device, job.threads, job.fp16)
    plan = job.plan

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return read_target(slide, plan, x0, y0, x1, y1)

    def has_tissue(y0: int, y1: int, x0: int, x1: int) -> bool:
        assert job.tissue is not None
        return job.tissue.any_in(x0 * plan.mpp_x, y0 * plan.mpp_y, x1 * plan.mpp_x, y1 * plan.mpp_y)

    result: ChunkResult = predict_chunk(read, job.geometry, cy, cx, predictor,
                                        batch_size=job.batch_size,
                                        has_tissue=has_tissue if job.tissue is not None else None)
    y0, _, x0, _ = job.geometry.chunk_region(cy, cx)
    if result.tiles_run:
        store_chunk(Path(job.output_path), y0, x0, result.probabilities, job.dtype)
    mark_chunk_done(Path(job.output_path), cy, cx)
    return result.tiles_run, result.tiles_skipped


def _chunk_has_tissue(job: ChunkJob, cy: int, cx: int) -> bool:
    if job.tissue is None:
        return True
    y0, y1, x0, x1 = job.geometry.chunk_region(cy, cx)
    margin = job.geometry.y.halo  # blended tiles reach a halo beyond their chunk
    p = job.plan
    return job.tissue.any_in((x0 - margin) * p.mpp_x, (y0 - margin) * p.mpp_y,
                             (x1 + margin) * p.mpp_x, (y1 + margin) * p.mpp_y)


def _tiles_in_chunk(geometry: Geometry, cy: int, cx: int) -> int:
    # count the tiles each chunk owns (in blend mode, neighbours' tiles also touch it)
    rows = range(cy * geometry.chunk_tiles, min((cy + 1) * geometry.chunk_tiles, geometry.y.count))
    cols = range(cx * geometry.chunk_tiles, min((cx + 1) * geometry.chunk_tiles, geometry.x.count))
    return len(rows) * len(cols)


@lru_cache(maxsize=8)
def _cached_slide(path: str, reader: ReaderName) -> SlideReader:
    return open_slide(path, reader)


@lru_cache(maxsize=4)
def _cached_predictor(card: ModelCard, backend: BackendName, device: str, threads: int | None,
                      fp16: bool) -> Predictor:
    return Predictor(card, create_backend(card, backend, device, threads=threads, fp16=fp16))


def _release(job: ChunkJob) -> None:
    """Close this run's slide and output handles (the model stays loaded for the next slide)."""
    _cached_slide.cache_clear()
    forget_open_outputs()


def clear_caches() -> None:
    """Forget cached slides, models and outputs (tests, long-lived processes)."""
    _cached_slide.cache_clear()
    _cached_predictor.cache_clear()
    forget_open_outputs()


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    """A JSON-able summary."""
    data = asdict(summary)
    data["tiles_per_second"] = round(summary.tiles_per_second, 3)
    return data


__all__ = ["RunOptions", "RunSummary", "process_chunk", "resolve_mpp", "run_slide"]
