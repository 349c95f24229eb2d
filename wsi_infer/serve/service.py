"""The service's state: its settings, the loaded models with their batchers, its metrics and
the threads that read and stitch regions."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import BackendName
from ..errors import ModelError, UnknownModelError
from ..models import DEFAULT_MODEL
from ..resources import Resources
from .batcher import BatchingPredictor
from .metrics import ServeMetrics
from .regions import DEFAULT_MAX_REGION_PIXELS, LoadedModel, Tiling, load_predictor

log = logging.getLogger("wsi_infer.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``wsi-infer serve`` is started with, except where it listens."""

    slides_root: Path
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    backend: BackendName = "onnxruntime"
    device: str = "cpu"
    threads: int | None = None
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_region_pixels: int = DEFAULT_MAX_REGION_PIXELS
    token: str | None = field(default=None, repr=False)
    tiling: Tiling = field(default_factory=Tiling)
    #: Threads that read, stitch and encode regions (each waits on the batcher meanwhile).
    request_threads: int = 32


class Service:
    """Loaded models (each behind one :class:`BatchingPredictor`), metrics and worker threads."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.root = config.slides_root.resolve()
        self.metrics = ServeMetrics()
        self.resources = Resources()  # the slides requests read (models load behind batchers)
        self.models: dict[str, LoadedModel] = {}
        self.pending = 0  # requests being answered (touched by the event loop only)
        try:
            for spec in config.models:
                self._load(spec)
        except BaseException:
            self.close()
            raise
        self.executor = ThreadPoolExecutor(config.request_threads, thread_name_prefix="region")

    def _load(self, spec: str) -> None:
        predictor = load_predictor(spec, self.config.backend, self.config.device,
                                   self.config.threads)
        name = predictor.card.name
        if name in self.models:
            raise ModelError(f"two --model options load a model named {name!r}")
        c = self.config
        observer = self.metrics.for_model(name, max_batch=c.max_batch,
                                          max_wait_s=c.max_wait_ms / 1000, max_queue=c.max_queue)
        batcher = BatchingPredictor(predictor, max_batch=c.max_batch, max_wait_ms=c.max_wait_ms,
                                    max_queue=c.max_queue, observer=observer, name=name)
        self.metrics.watch_queue(name, lambda: batcher.depth)
        self.models[name] = LoadedModel(name, spec, predictor.card, batcher)
        log.info("loaded model %s v%s on %s (%s)", name, predictor.card.version,
                 predictor.backend.describe(), self.config.backend)

    def model(self, name: str | None) -> LoadedModel:
        """The model called ``name`` (its card name or the spec it was loaded with); the
        first loaded model when ``name`` is None."""
        if name is None:
            return next(iter(self.models.values()))
        if name in self.models:
            return self.models[name]
        for loaded in self.models.values():
            if name == loaded.spec:
                return loaded
        raise UnknownModelError(f"unknown model {name!r}; this service has loaded: "
                           f"{', '.join(self.models)}")

    def close(self) -> None:
        """Stop the batchers and the region threads."""
        for loaded in self.models.values():
            loaded.batcher.close()
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.resources.close()
