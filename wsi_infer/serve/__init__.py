"""``wsi-infer serve``: region predictions over HTTP with auto-batching (docs/serve.md).

* :mod:`.batcher` — :class:`BatchingPredictor`, the per-model queue that batches tiles;
* :mod:`.regions` — a region through the batcher, exactly as ``wsi_infer.region`` does it;
* :mod:`.security` — slides only under the root, the bearer token;
* :mod:`.metrics` — Prometheus metrics; :mod:`.encode` — answer bodies and headers;
* :mod:`.service` — loaded models and settings; :mod:`.app` — the FastAPI routes;
* :mod:`.cli` — the ``serve`` subcommand.

Importing this package needs neither FastAPI nor uvicorn (the ``serve`` extra); the service does.
"""

from .batcher import BatchingPredictor, Ticket
from .cli import add_serve_parser, cmd_serve

__all__ = ["BatchingPredictor", "Ticket", "add_serve_parser", "cmd_serve"]
