"""``wsi-infer serve``: its options and how it starts (FastAPI and uvicorn are imported only
when the service starts, so the rest of the command line works without them)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from ..errors import ServeSetupError, SlideError
from ..models import DEFAULT_MODEL
from .regions import DEFAULT_MAX_REGION_PIXELS

log = logging.getLogger("wsi_infer")

TOKEN_ENV = "WSI_INFER_TOKEN"


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``sub`` (the result of ``add_subparsers``)."""
    p = sub.add_parser(
        "serve", help="HTTP service predicting slide regions, with auto-batching",
        description="Serve region predictions over HTTP (FastAPI + uvicorn). Tiles of concurrent "
        "requests are queued per model and run together: a batch runs when it holds --max-batch "
        "tiles or its oldest tile has waited --max-wait-ms. API and tuning: docs/serve.md.")
    p.add_argument("--slides-root", type=Path, required=True, metavar="DIR",
                   help="folder the slides are served from; requests name slides relative to it")
    p.add_argument("--model", dest="models", action="append", default=None, metavar="NAME_OR_CARD",
                   help=f"model to load (repeatable; default: {DEFAULT_MODEL})")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="default: onnxruntime")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps, ... (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="backend threads (default: all cores)")
    p.add_argument("--max-batch", type=_positive_int, default=16,
                   help="most tiles per model call (default: 16)")
    p.add_argument("--max-wait-ms", type=_non_negative_float, default=5.0,
                   help="longest a queued tile waits for companions (default: 5; 0 = never wait)")
    p.add_argument("--max-queue", type=_positive_int, default=256,
                   help="tiles that may wait per model; beyond, HTTP 503 (default: 256)")
    p.add_argument("--max-region-pixels", type=_positive_int, default=DEFAULT_MAX_REGION_PIXELS,
                   metavar="N", help="most output pixels (at the model's resolution) per request; "
                   f"larger regions get HTTP 413 (default: {DEFAULT_MAX_REGION_PIXELS})")
    p.add_argument("--tile-size", type=_positive_int, default=None,
                   help="as `wsi-infer run --tile-size` (default: the card's)")
    p.add_argument("--halo", type=int, default=None,
                   help="as `wsi-infer run --halo` (default: the card's receptive margin)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: "
                   f"${TOKEN_ENV} if set; prefer the variable: options show in `ps`)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the models and serve until interrupted."""
    try:
        import uvicorn

        from .app import create_app
        from .regions import Tiling
        from .service import ServeConfig, Service
    except ImportError as exc:
        raise ServeSetupError(f"wsi-infer serve needs the 'serve' extra ({exc.name} is "
                              "missing): pip install 'wsi-infer[serve]'") from exc
    root: Path = args.slides_root
    if not root.is_dir():
        raise SlideError(f"--slides-root {root}: not a folder")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not token and not _is_loopback(args.host):
        log.warning("serving on %s without a token: anyone who can reach it can read slides "
                    "under %s; set %s", args.host, root, TOKEN_ENV)
    config = ServeConfig(
        slides_root=root, models=tuple(args.models or (DEFAULT_MODEL,)), backend=args.backend,
        device=args.device, threads=args.threads, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_region_pixels=args.max_region_pixels, token=token,
        tiling=Tiling(args.tile_size, args.halo))
    service = Service(config)
    log.info("serving %s on http://%s:%d (max batch %d, max wait %g ms, queue %d tiles)",
             root, args.host, args.port, args.max_batch, args.max_wait_ms, args.max_queue)
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning",
                    access_log=args.access_log)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
