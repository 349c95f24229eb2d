"""Auto-batching: many callers with a few tiles each, one model call with a full batch.

:class:`BatchingPredictor` wraps a :class:`~wsi_infer.predictor.Predictor` (one model instance
on one device) and offers the same ``predict(tiles)``, safe to call from many threads at once.
Every tile becomes one entry in a bounded queue; a single worker thread takes up to
``max_batch`` queued tiles of the same shape and runs them as one batch.  It runs a batch as
soon as it is full, or when the *oldest* queued tile has waited ``max_wait_ms``, whichever
comes first, so latency stays bounded while throughput rises with load.

A caller identifies itself with a :class:`Ticket`; :meth:`BatchingPredictor.cancel` drops the
ticket's queued tiles (a client that went away) and makes its later calls fail fast.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import Cancelled, QueueFullError
from ..predictor import Predictor

log = logging.getLogger("wsi_infer.serve")


class BatchObserver(Protocol):
    """Receives what the batcher does (metrics)."""

    def batch_done(self, size: int, waits_s: Sequence[float], compute_s: float) -> None:
        """A batch of ``size`` tiles ran; its tiles had queued ``waits_s`` seconds."""

    def dropped(self, tiles: int) -> None:
        """Queued tiles were dropped because their caller cancelled."""

    def rejected(self, tiles: int) -> None:
        """Tiles were refused because the queue was full."""


@dataclass(eq=False)
class Ticket:
    """One caller's claim on the queue (e.g. one HTTP request) and what its tiles went through.

    Only the batcher's worker thread writes the statistics, before it resolves the futures the
    caller waits on, so the caller may read them once its ``predict`` returns.
    """

    cancelled: bool = False
    tiles: int = 0
    max_wait_s: float = 0.0
    compute_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Item:
    tile: np.ndarray
    future: Future[np.ndarray]
    ticket: Ticket | None
    enqueued: float


class BatchingPredictor:
    """A thread-safe, auto-batching front of one :class:`Predictor`.

    ``max_batch`` tiles at most per model call; a batch waits at most ``max_wait_ms`` for its
    oldest tile's companions (0: run whatever is queued at once); at most ``max_queue`` tiles
    wait at a time (more raise :class:`~wsi_infer.errors.QueueFullError`).
    """

    def __init__(self, predictor: Predictor, *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256, observer: BatchObserver | None = None,
                 name: str = "model") -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._observer = observer
        self._queues: dict[tuple[int, ...], deque[_Item]] = {}
        self._depth = 0
        self._recent_compute_s = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def num_classes(self) -> int:
        """Output channels of the model."""
        return self.predictor.num_classes

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (it stops only when closed)."""
        return self._worker.is_alive()

    @property
    def depth(self) -> int:
        """Tiles waiting in the queue now."""
        return self._depth

    def predict(self, tiles: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        """``(N, H, W, 3)`` RGB tiles → ``(N, classes, H, W)`` float32, like
        :meth:`Predictor.predict`; blocks until every tile has run in some batch.

        Raises :class:`~wsi_infer.errors.QueueFullError` when the tiles do not fit in the queue (none is queued then)
        and :class:`~wsi_infer.errors.Cancelled` when ``ticket`` is or gets cancelled.
        """
        futures = self.submit(tiles, ticket)
        try:
            results = [f.result() for f in futures]
        except CancelledError as exc:
            raise Cancelled("the request was cancelled; its queued tiles were dropped") from exc
        if not results:
            return np.zeros((0, self.num_classes, *tiles.shape[1:3]), np.float32)
        return np.stack(results)

    def for_ticket(self, ticket: Ticket) -> TicketPredictor:
        """A view whose ``predict`` queues tiles under ``ticket`` (for ``predict_window``)."""
        return TicketPredictor(self, ticket)

    def submit(self, tiles: np.ndarray, ticket: Ticket | None = None) -> list[Future[np.ndarray]]:
        """Queue each tile; returns one future per tile, resolved with ``(classes, H, W)``."""
        if tiles.ndim != 4 or tiles.shape[3] != 3:
            raise ValueError(f"expected (N, H, W, 3) tiles, got shape {tiles.shape}")
        n = len(tiles)
        now = time.perf_counter()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            if ticket is not None and ticket.cancelled:
                raise Cancelled("the request was cancelled")
            if n > self.max_queue:
                raise ValueError(f"{n} tiles can never fit in a queue of {self.max_queue}")
            if self._depth + n > self.max_queue:
                retry = self._retry_after_s(n)
                if self._observer is not None:
                    self._observer.rejected(n)
                raise QueueFullError(
                    f"the inference queue is full ({self._depth} of {self.max_queue} tiles "
                    f"queued, {n} more asked for); retry in {retry:.0f} s", retry)
            queue = self._queues.setdefault(tuple(tiles.shape[1:]), deque())
            futures: list[Future[np.ndarray]] = []
            for tile in tiles:
                future: Future[np.ndarray] = Future()
                queue.append(_Item(tile, future, ticket, now))
                futures.append(future)
            self._depth += n
            self._cond.notify_all()
        return futures

    def cancel(self, ticket: Ticket) -> int:
        """Mark ``ticket`` cancelled and drop its queued tiles (their futures are cancelled);
        returns how many were dropped.  Tiles already running finish and are discarded."""
        dropped: list[_Item] = []
        with self._cond:
            ticket.cancelled = True
            for shape, queue in self._queues.items():
                keep = deque(item for item in queue if item.ticket is not ticket)
                dropped.extend(item for item in queue if item.ticket is ticket)
                self._queues[shape] = keep
            self._depth -= len(dropped)
            self._cond.notify_all()
        for item in dropped:
            item.future.cancel()
        if dropped and self._observer is not None:
            self._observer.dropped(len(dropped))
        return len(dropped)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker; tiles still queued fail with :class:`Cancelled`."""
        with self._cond:
            self._closed = True
            pending = [item for queue in self._queues.values() for item in queue]
            self._queues.clear()
            self._depth = 0
            self._cond.notify_all()
        for item in pending:
            item.future.set_exception(Cancelled("the service is shutting down"))
        self._worker.join(timeout)

    # -- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Item] | None:
        """Wait until a batch is due and take it off the queue (``None``: closed)."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                queue = self._due_queue()
                if queue is not None:
                    break
                self._cond.wait(self._time_to_deadline())
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._depth -= len(batch)
            return batch

    def _due_queue(self) -> deque[_Item] | None:
        """A queue with a full batch, else the oldest tile's queue if it has waited long enough."""
        oldest: deque[_Item] | None = None
        for queue in self._queues.values():
            if len(queue) >= self.max_batch:
                return queue
            if queue and (oldest is None or queue[0].enqueued < oldest[0].enqueued):
                oldest = queue
        if oldest is not None and time.perf_counter() - oldest[0].enqueued >= self.max_wait_s:
            return oldest
        return None

    def _time_to_deadline(self) -> float | None:
        heads = [queue[0].enqueued for queue in self._queues.values() if queue]
        if not heads:
            return None  # nothing queued: sleep until notified
        return max(0.0, min(heads) + self.max_wait_s - time.perf_counter())

    def _execute(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        waits = [started - item.enqueued for item in batch]
        try:
            probabilities = self.predictor.predict(np.stack([item.tile for item in batch]))
        except BaseException as exc:  # every waiting caller gets the error
            log.exception("batch of %d tiles failed on %s", len(batch), self.name)
            for item in batch:
                _resolve(item.future, exc=exc)
            return
        compute = time.perf_counter() - started
        self._recent_compute_s = 0.8 * self._recent_compute_s + 0.2 * compute
        seen: set[int] = set()
        for item, wait, prob in zip(batch, waits, probabilities, strict=True):
            ticket = item.ticket
            if ticket is not None:
                ticket.tiles += 1
                ticket.max_wait_s = max(ticket.max_wait_s, wait)
                if id(ticket) not in seen:
                    seen.add(id(ticket))
                    ticket.compute_s += compute
                    ticket.batch_sizes.append(len(batch))
            _resolve(item.future, result=prob)
        if self._observer is not None:
            self._observer.batch_done(len(batch), waits, compute)

    def _retry_after_s(self, wanted: int) -> float:
        """Seconds until ``wanted`` more tiles likely fit, from recent batch times (>= 1)."""
        batches = math.ceil((self._depth + wanted - self.max_queue) / self.max_batch)
        return float(max(1, math.ceil(batches * (self._recent_compute_s + self.max_wait_s))))


class TicketPredictor:
    """:class:`BatchingPredictor` seen by one caller: ``predict`` queues under its ticket.

    Has the two members :func:`wsi_infer.stitching.predict_window` uses of a predictor.
    """

    def __init__(self, batcher: BatchingPredictor, ticket: Ticket) -> None:
        self.batcher = batcher
        self.ticket = ticket

    @property
    def num_classes(self) -> int:
        return self.batcher.num_classes

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return self.batcher.predict(tiles, self.ticket)


def _resolve(future: Future[np.ndarray], *, result: np.ndarray | None = None,
             exc: BaseException | None = None) -> None:
    """Set a future's outcome unless its caller already cancelled it."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled meanwhile: nobody waits for it
        return
