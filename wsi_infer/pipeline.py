"""One slide from file to OME-Zarr: open → mpp → level → tissue → tiles (Dask) → model → stitch → write.

Nothing here knows about the command line.  Every chunk is an independent Dask task that
reads its own window (chunk plus halo) straight from the slide, so a chunk without tissue is
never read, tasks share no data, and memory grows with the chunk size and the number of
workers, never with the slide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.threaded
import numpy as np
from dask.callbacks import Callback

from .errors import Cancelled
from .models import resolve_model
from .overlay import (
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUS_SKIPPED,
    OverlaySpec,
    OverlayWriter,
    existing_run,
    mark_chunk_done,
    store_chunk,
)
from .ownership import OutputLock
from .plan import RunOptions, RunPlan, plan_run
from .predictor import Predictor
from .provenance import now, software
from .readers import SlideReader
from .resources import Resources, worker_resources
from .stitching import predict_window
from .tiling import Geometry
from .tissue import TissueMask

log = logging.getLogger("wsi_infer")

#: Called with (tiles done, tiles total) as chunks finish.
ProgressCallback = Callable[[int, int], None]


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
    """All a worker needs to compute and store chunks of one run (picklable)."""

    plan: RunPlan
    batch_size: int
    output_path: str
    run_id: str  # the owning run: workers write into its output only


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
    resources: Resources | None = None,
) -> RunSummary:
    """Run ``options.model`` over a slide and write the overlay; returns a summary.

    The run owns its output for its whole length (:class:`~wsi_infer.ownership.OutputLock`):
    another run on the same output is refused with :class:`~wsi_infer.errors.OutputInUseError`.
    With ``resume``, an existing output made with the same run key is kept: if it is complete
    nothing is done (status ``"skipped"``), if not, only the chunks it lacks are computed.
    ``client`` (a ``distributed.Client``) runs the chunks on a Dask cluster; without it they
    run on Dask's threaded scheduler with ``options.workers`` threads.  ``should_stop`` is
    polled between chunks; when it returns true the run stops with :class:`Cancelled` and the
    output stays marked incomplete (it can be resumed).  ``resources`` (slides, models) are
    shared with the caller's other runs; without them the run loads and closes its own.
    """
    started = time.perf_counter()
    slide_path = Path(slide_path)
    card = resolve_model(options.model, options.bare_model)
    out = Path(output) if output is not None else default_output(slide_path, card.name)
    owned = resources is None
    resources = resources if resources is not None else Resources()
    try:
        with OutputLock(out) as lock:
            slide = resources.slide(slide_path, options.reader)
            plan = plan_run(slide, card, options)
            return _run(plan, slide, out, lock, resources, started, progress=progress,
                        resume=resume, client=client, should_stop=should_stop)
    finally:
        resources.close() if owned else resources.close_slides()


def _run(plan: RunPlan, slide: SlideReader, out: Path, lock: OutputLock, resources: Resources,
         started: float, *, progress: ProgressCallback | None, resume: bool, client: Any,
         should_stop: Callable[[], bool] | None) -> RunSummary:
    options, timings = plan.options, {}
    previous = existing_run(out) if resume else None
    same_run = previous is not None and previous.get("run_key") == plan.key
    if same_run and previous is not None and previous["status"] == STATUS_COMPLETE:
        log.info("%s: already complete in %s, skipped", plan.slide_path, out)
        return RunSummary(str(plan.slide_path), str(out), 0, 0, 0, 0, 0.0, STATUS_SKIPPED)
    # Load and try the model before writing anything: a bad model or device leaves no output.
    predictor = resources.predictor(plan.card, options.backend, options.device, options.threads,
                                    options.fp16)
    _probe_model(predictor, plan.geometry)
    batch_size = predictor.batch_size(options.batch_size)
    t0 = time.perf_counter()
    if options.tissue_mask:
        plan = plan.with_tissue(resources.tissue(plan.slide_path, options.reader, plan.mpp))
    timings["tissue_s"] = time.perf_counter() - t0
    _warn_about_tissue(plan.slide_path, plan.tissue)
    tissue_chunks = plan.chunks()
    if same_run:
        writer = OverlayWriter.open(out, lock=lock)
        done = writer.done_chunks()
        log.info("%s: resuming %s, %d of %d chunks already written", plan.slide_path, out,
                 len(done & set(tissue_chunks)), len(tissue_chunks))
    else:
        provenance = _provenance(slide, plan, predictor, batch_size)
        writer = OverlayWriter.create(out, overlay_spec(plan), {**provenance, "run_key": plan.key},
                                      overwrite=options.overwrite or resume, lock=lock)
        done = set()
    todo = [c for c in tissue_chunks if c not in done]
    job = ChunkJob(plan, batch_size, str(out), lock.run_id)
    try:
        t0 = time.perf_counter()
        results = _compute_chunks(job, todo, options.workers, progress, client, should_stop,
                                  resources)
        timings["inference_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.build_pyramid()
        timings["pyramid_s"] = time.perf_counter() - t0
    except BaseException as exc:
        _mark_failed(writer, exc)
        raise
    geometry = plan.geometry
    tiles_run = sum(r[0] for r in results)
    tiles_in_todo = sum(geometry.tiles_in_chunk(*c) for c in todo)
    tiles_skipped = sum(r[1] for r in results) + geometry.tiles_total - tiles_in_todo
    seconds = time.perf_counter() - started
    timings["total_s"] = seconds
    chunks_total = geometry.chunk_grid[0] * geometry.chunk_grid[1]
    summary = RunSummary(
        slide=str(plan.slide_path), output=str(out), tiles_run=tiles_run,
        tiles_skipped=tiles_skipped, chunks_run=len(todo), chunks_skipped=chunks_total - len(todo),
        seconds=seconds, status=STATUS_COMPLETE, timings=timings,
    )
    writer.set_status(
        STATUS_COMPLETE, finished=now(),
        counts={"tiles_run": tiles_run, "tiles_skipped": tiles_skipped,
                "chunks_run": summary.chunks_run, "chunks_skipped": summary.chunks_skipped,
                "chunks_resumed": len(tissue_chunks) - len(todo)},
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    return summary


def overlay_spec(plan: RunPlan) -> OverlaySpec:
    """The overlay a run of ``plan`` writes: size, chunks, classes and resolution."""
    card, level, options = plan.card, plan.level, plan.options
    return OverlaySpec(
        height=level.height, width=level.width, chunk=plan.geometry.chunk,
        class_names=tuple(c.name for c in card.classes),
        class_colors=tuple(c.color for c in card.classes),
        mpp_x=level.mpp_x, mpp_y=level.mpp_y, slide_mpp_x=plan.mpp.x, slide_mpp_y=plan.mpp.y,
        dtype=options.dtype,
    )


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


def _provenance(slide: SlideReader, plan: RunPlan, predictor: Predictor,
                batch_size: int) -> dict[str, Any]:
    card, level, geometry, options, mpp, tissue = (plan.card, plan.level, plan.geometry,
                                                   plan.options, plan.mpp, plan.tissue)
    return {
        "software": software(),
        "started": now(),
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256,
                  "card_sha256": card.content_sha256, "card": str(card.path), "mpp": card.mpp,
                  "classes": [c.name for c in card.classes], "activation": card.activation},
        "slide": {"path": str(slide.path.resolve()), "fingerprint": plan.fingerprint,
                  "reader": slide.name, "vendor": slide.vendor,
                  "width": slide.dimensions[0], "height": slide.dimensions[1],
                  "mpp_x": mpp.x, "mpp_y": mpp.y, "mpp_source": mpp.source},
        "output": {"mpp_x": level.mpp_x, "mpp_y": level.mpp_y, "width": level.width,
                   "height": level.height, "dtype": options.dtype,
                   "read_level": level.level, "resample_factor": [level.factor_y, level.factor_x]},
        "tiling": {"mode": geometry.mode, "tile": geometry.y.tile, "stride": geometry.y.stride,
                   "halo": geometry.y.halo, "size_multiple": geometry.y.align,
                   "chunk": geometry.chunk, "batch_size": batch_size},
        "runtime": {"backend": options.backend, "device": predictor.backend.describe(),
                    "threads": options.threads, "fp16": options.fp16, "workers": options.workers},
        "tissue": None if tissue is None else {
            "method": f"{tissue.modality} threshold + morphology", "fraction": round(tissue.fraction, 4),
            "mask_mpp": [tissue.mpp_y, tissue.mpp_x]},
    }


def _compute_chunks(job: ChunkJob, todo: list[tuple[int, int]], workers: int,
                    progress: ProgressCallback | None, client: Any, should_stop: Callable[[], bool] | None,
                    resources: Resources) -> list[tuple[int, int]]:
    """Run the chunk tasks on a Dask cluster (``client``: each worker uses its own process's
    resources) or Dask's threaded scheduler (with this run's ``resources``), reporting progress
    in tiles."""
    geometry = job.plan.geometry
    total = sum(geometry.tiles_in_chunk(*c) for c in todo)
    if client is not None:
        task: Callable[..., tuple[int, int]] = process_chunk
    else:
        task = partial(process_chunk, resources=resources)
        if should_stop is not None:
            task = partial(_stoppable, should_stop, task)
    # One graph node holds the job (tissue mask, plan...): tasks refer to it instead of each
    # carrying a copy, so a cluster receives it once per worker, not once per chunk.
    shared = dask.delayed(job, name=f"job-{job.run_id}")
    tasks = [dask.delayed(task, pure=False)(shared, cy, cx, dask_key_name=f"chunk-{cy}-{cx}-{job.run_id}")
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
                    raise Cancelled(f"{job.plan.slide_path}: cancelled")
        finally:
            client.cancel(futures)
        return results

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(result, tuple):
            report(result)

    with Callback(posttask=posttask):
        # the scheduler function itself: naming it "threads" makes Dask import distributed (~1 s)
        return list(dask.compute(*tasks, scheduler=dask.threaded.get, num_workers=max(1, workers)))


def _stoppable(should_stop: Callable[[], bool], task: Callable[[ChunkJob, int, int], tuple[int, int]],
               job: ChunkJob, cy: int, cx: int) -> tuple[int, int]:
    if should_stop():
        raise Cancelled(f"{job.plan.slide_path}: cancelled")
    return task(job, cy, cx)


def process_chunk(job: ChunkJob, cy: int, cx: int, resources: Resources | None = None) -> tuple[int, int]:
    """Compute chunk ``(cy, cx)`` and store it; returns (tiles run, tiles skipped).

    ``resources``: the run's (threaded runs); on a cluster worker, that process's own."""
    resources = resources if resources is not None else worker_resources()
    plan, options, out = job.plan, job.plan.options, Path(job.output_path)
    slide = resources.slide(plan.slide_path, options.reader)
    predictor = resources.predictor(plan.card, options.backend, options.device, options.threads,
                                    options.fp16)
    region = plan.geometry.chunk_region(cy, cx)
    result = predict_window(partial(plan.read, slide), plan.geometry, region, predictor,
                            batch_size=job.batch_size,
                            has_tissue=plan.has_tissue if plan.tissue is not None else None)
    if result.tiles_run:
        store_chunk(resources.output_level0(out, job.run_id), out, region.y0, region.x0,
                    result.probabilities, options.dtype)
    mark_chunk_done(out, cy, cx)
    return result.tiles_run, result.tiles_skipped


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    """A JSON-able summary."""
    data = asdict(summary)
    data["tiles_per_second"] = round(summary.tiles_per_second, 3)
    return data


__all__ = ["RunOptions", "RunSummary", "process_chunk", "run_slide"]
