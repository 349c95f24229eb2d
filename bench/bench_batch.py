#!/usr/bin/env python
"""Batch size as a dial: tiles/s and per-call latency for batch sizes 1..64, one model, one device.

    python bench/bench_batch.py --model nuclei --device cpu
    python bench/bench_batch.py --model tissue --backend torch --device cuda --fp16
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from wsi_infer.backends import create_backend
from wsi_infer.models import resolve_model
from wsi_infer.predictor import Predictor
from wsi_infer.tiling import geometry_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per batch size")
    args = parser.parse_args()
    card = resolve_model(args.model)
    predictor = Predictor(card, create_backend(card, args.backend, args.device, fp16=args.fp16))
    tile = geometry_for(card, 10**5, 10**5).y.tile
    rng = np.random.default_rng(0)
    tiles = rng.uniform(100, 250, (max(args.batches), tile, tile, 3)).astype(np.float32)
    predictor.predict(tiles[:1])
    rows = []
    print(f"model {card.name}  backend {args.backend}  device {predictor.backend.describe()}  "
          f"tile {tile}px (megapixels/tile {tile * tile / 1e6:.3f})")
    print(f"{'batch':>6}{'tiles/s':>10}{'MP/s':>8}{'latency ms/call':>17}{'ms/tile':>9}")
    for batch in args.batches:
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds or calls < 2:
            predictor.predict(tiles[:batch])
            calls += 1
        elapsed = time.perf_counter() - t0
        per_call = elapsed / calls
        row = {"batch": batch, "tiles_per_s": batch / per_call,
               "mp_per_s": batch * tile * tile / per_call / 1e6, "latency_ms": per_call * 1e3}
        rows.append(row)
        print(f"{batch:>6}{row['tiles_per_s']:>10.2f}{row['mp_per_s']:>8.2f}{row['latency_ms']:>17.1f}"
              f"{row['latency_ms'] / batch:>9.1f}")
    print(json.dumps({"model": card.name, "backend": args.backend, "device": args.device,
                      "tile": tile, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
