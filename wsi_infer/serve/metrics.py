"""Prometheus metrics of the service: HTTP requests, queue depth, batch sizes, queue wait and
compute time.  Each service owns its own registry (several can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Tiles per model call.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
#: Seconds a tile waits in the queue / a batch computes / a request takes.
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """All the service's metrics; :meth:`for_model` gives a batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wsi_infer_http_requests", "HTTP requests answered",
                                ["path", "status"], registry=r)
        self.request_seconds = Histogram("wsi_infer_http_request_seconds", "HTTP request time",
                                         ["path"], buckets=TIME_BUCKETS, registry=r)
        self.in_flight = Gauge("wsi_infer_http_requests_in_flight", "HTTP requests being "
                               "answered", registry=r)
        self.queue_depth = Gauge("wsi_infer_queue_depth_tiles", "tiles waiting in the queue",
                                 ["model"], registry=r)
        self.queue_capacity = Gauge("wsi_infer_queue_capacity_tiles", "--max-queue",
                                    ["model"], registry=r)
        self.max_batch = Gauge("wsi_infer_max_batch_tiles", "--max-batch", ["model"], registry=r)
        self.max_wait = Gauge("wsi_infer_max_wait_seconds", "--max-wait-ms / 1000",
                              ["model"], registry=r)
        self.batch_size = Histogram("wsi_infer_batch_size_tiles", "tiles per model call",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("wsi_infer_queue_wait_seconds", "time a tile waited in the "
                                    "queue before its batch ran", ["model"],
                                    buckets=TIME_BUCKETS, registry=r)
        self.compute = Histogram("wsi_infer_batch_compute_seconds", "time of one model call "
                                 "(preprocessing, model, activation)", ["model"],
                                 buckets=TIME_BUCKETS, registry=r)
        self.queue_wait_max = Gauge("wsi_infer_queue_wait_max_seconds", "longest queue wait of "
                                    "any tile since start", ["model"], registry=r)
        self.compute_max = Gauge("wsi_infer_batch_compute_max_seconds", "longest model call "
                                 "since start", ["model"], registry=r)
        self.tiles = Counter("wsi_infer_tiles", "tiles run", ["model"], registry=r)
        self.dropped = Counter("wsi_infer_tiles_dropped", "queued tiles dropped because their "
                               "client went away", ["model"], registry=r)
        self.rejected = Counter("wsi_infer_tiles_rejected", "tiles refused because the queue "
                                "was full (HTTP 503)", ["model"], registry=r)

    def for_model(self, model: str, *, max_batch: int, max_wait_s: float,
                  max_queue: int) -> ModelObserver:
        """Record a model's batching settings and return the observer its batcher reports to."""
        self.queue_capacity.labels(model).set(max_queue)
        self.max_batch.labels(model).set(max_batch)
        self.max_wait.labels(model).set(max_wait_s)
        return ModelObserver(self, model)

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """Read a model's queue depth from ``depth`` at every scrape."""
        self.queue_depth.labels(model).set_function(depth)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.request_seconds.labels(path).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class ModelObserver:
    """A :class:`~wsi_infer.serve.batcher.BatchObserver` writing one model's metrics."""

    def __init__(self, metrics: ServeMetrics, model: str) -> None:
        m = metrics
        self._batch_size = m.batch_size.labels(model)
        self._queue_wait = m.queue_wait.labels(model)
        self._compute = m.compute.labels(model)
        self._tiles = m.tiles.labels(model)
        self._dropped = m.dropped.labels(model)
        self._rejected = m.rejected.labels(model)
        self._wait_max_gauge = m.queue_wait_max.labels(model)
        self._compute_max_gauge = m.compute_max.labels(model)
        self._wait_max = 0.0
        self._compute_max = 0.0

    def batch_done(self, size: int, waits_s: Sequence[float], compute_s: float) -> None:
        self._batch_size.observe(size)
        self._compute.observe(compute_s)
        self._tiles.inc(size)
        for wait in waits_s:
            self._queue_wait.observe(wait)
        self._wait_max = max(self._wait_max, *waits_s)
        self._compute_max = max(self._compute_max, compute_s)
        self._wait_max_gauge.set(self._wait_max)
        self._compute_max_gauge.set(self._compute_max)

    def dropped(self, tiles: int) -> None:
        self._dropped.inc(tiles)

    def rejected(self, tiles: int) -> None:
        self._rejected.inc(tiles)
