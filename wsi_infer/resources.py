"""What runs share within one process: open slides, loaded models, tissue masks, open outputs.

A :class:`Resources` belongs to whoever drives the runs (one ``wsi-infer`` run, a batch, the
napari plugin, the service) and is closed by it.  Chunk tasks that Dask runs in other processes
(cluster workers) use that process's own :func:`worker_resources`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Self, TypeVar

import zarr

from .backends import BackendName, create_backend
from .models import ModelCard
from .overlay import open_level0
from .predictor import Predictor
from .provenance import slide_fingerprint
from .readers import Mpp, ReaderName, SlideReader, open_slide
from .tissue import TissueMask, detect_tissue

T = TypeVar("T")


class _Lru:
    """A small thread-safe LRU mapping that closes what it evicts."""

    def __init__(self, size: int, close: Callable[[Any], None] | None = None) -> None:
        self.size, self._close = size, close
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[no-any-return]
            value = make()
            self._items[key] = value
            while len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                if self._close is not None:
                    self._close(old)
            return value

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        if self._close is not None:
            for item in items:
                self._close(item)


class Resources:
    """Open slides, loaded predictors, tissue masks and open output arrays, each made once."""

    def __init__(self, *, max_slides: int = 8, max_models: int = 4) -> None:
        self._slides = _Lru(max_slides, lambda s: s.close())
        self._predictors = _Lru(max_models)
        self._tissue = _Lru(16)
        self._outputs = _Lru(8)
        self._fingerprints = _Lru(64)

    def slide(self, path: str | os.PathLike[str], reader: ReaderName = "auto") -> SlideReader:
        """The slide at ``path``, opened once."""
        return self._slides.get((str(path), reader), lambda: open_slide(path, reader))

    def predictor(self, card: ModelCard, backend: BackendName, device: str,
                  threads: int | None = None, fp16: bool = False) -> Predictor:
        """``card``'s model loaded on ``device`` once (checksum verified on load)."""
        return self._predictors.get(
            (card, backend, device, threads, fp16),
            lambda: Predictor(card, create_backend(card, backend, device, threads=threads, fp16=fp16)))

    def fingerprint(self, path: str | os.PathLike[str]) -> str:
        """The slide file's fingerprint, computed again only when its size or mtime change."""
        stat = os.stat(path)
        return self._fingerprints.get((str(path), stat.st_size, stat.st_mtime_ns),
                                      lambda: slide_fingerprint(Path(path)))

    def tissue(self, path: str | os.PathLike[str], reader: ReaderName, mpp: Mpp) -> TissueMask:
        """The tissue mask of a slide, detected once."""
        return self._tissue.get((str(path), reader, mpp),
                                lambda: detect_tissue(self.slide(path, reader), mpp))

    def output_level0(self, output: Path, run_id: str) -> zarr.Array:
        """Level 0 of run ``run_id``'s output, opened once for writing."""
        return self._outputs.get((str(output), run_id), lambda: open_level0(output))

    def close_slides(self) -> None:
        """Close the open slides, tissue masks and outputs (the models stay loaded)."""
        self._slides.clear()
        self._tissue.clear()
        self._outputs.clear()

    def close(self) -> None:
        """Release everything."""
        self.close_slides()
        self._predictors.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_worker: Resources | None = None
_worker_lock = threading.Lock()


def worker_resources() -> Resources:
    """The resources of this process, for chunk tasks run by Dask cluster workers (a worker
    keeps its models loaded between tasks and runs)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = Resources()
        return _worker
