"""Run models from napari: a whole slide in a worker thread (cancellable), or a field of view."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from napari.qt.threading import FunctionWorker, thread_worker
from wsi_infer.backends import onnx_backend, torch_backend
from wsi_infer.models import resolve_model
from wsi_infer.pipeline import RunOptions, RunSummary, run_slide
from wsi_infer.rect import Rect
from wsi_infer.region import RegionPrediction, predict_region
from wsi_infer.resources import Resources

ProgressCallback = Callable[[int, int], None]


@cache
def devices_for(backend: str) -> tuple[str, ...]:
    """Devices ``backend`` can use here (what ``wsi_infer.backends.available_devices()`` lists
    for it), asked only when that backend is chosen: importing torch takes seconds."""
    modules = {"onnxruntime": onnx_backend, "torch": torch_backend}
    return tuple(modules[backend].available_devices()) if backend in modules else ()


def default_output(slide_path: str | os.PathLike[str], model: str) -> Path:
    """``<slide folder>/<slide stem>.<model name>.zarr``."""
    slide_path = Path(slide_path)
    return slide_path.parent / f"{slide_path.stem}.{resolve_model(model).name}.zarr"


@dataclass
class SlideRun:
    """A whole-slide run in a napari worker thread; :meth:`cancel` stops it between chunks."""

    worker: FunctionWorker[RunSummary]
    output: Path
    stop: threading.Event

    def cancel(self) -> None:
        """Ask the run to stop: ``run_slide`` raises ``wsi_infer.errors.Cancelled`` after the
        chunks already started (the output stays incomplete and can be resumed)."""
        self.stop.set()


def start_slide_run(slide_path: str | os.PathLike[str], output: str | os.PathLike[str],
                    options: RunOptions, progress: ProgressCallback | None = None,
                    *, start: bool = True, resources: Resources | None = None) -> SlideRun:
    """Run ``wsi_infer.pipeline.run_slide`` in a worker thread.

    ``progress(done, total)`` is called from the run's threads (connect it to a Qt signal to
    reach the GUI).  With ``resume``, an output that is already complete is reused and an
    unfinished one is completed.  Connect to ``run.worker.returned/errored`` before ``start``
    when ``start=False``.  ``resources`` (the widget's) keep the model loaded between runs.
    """
    stop = threading.Event()
    worker = thread_worker(run_slide, start_thread=False, ignore_errors=True)(
        str(slide_path), str(output), options, progress=progress, should_stop=stop.is_set,
        resume=True, resources=resources)
    run = SlideRun(worker, Path(output), stop)
    if start:
        worker.start()
    return run


def predict_fov(slide_path: str | os.PathLike[str], rect: Rect, options: RunOptions, *,
                resources: Resources) -> RegionPrediction:
    """Predict the level-0 rectangle ``rect`` with batch size 1 (latency)."""
    return predict_region(slide_path, rect, dataclasses.replace(options, batch_size=1),
                          resources=resources)
