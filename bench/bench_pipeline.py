#!/usr/bin/env python
"""Measure read-only, compute-only and end-to-end throughput on one slide and model, and the
end-to-end time against the bound no pipeline on this machine can beat:

    T = max(T_read, T_compute, (CPU_read + CPU_compute) / cores)

Each phase runs in its own process so its peak RSS is its own.  Prints a table and a JSON line.

    python bench/bench_pipeline.py                       # synthetic 20,000 x 15,000 slide, tissue model
    python bench/bench_pipeline.py --slide x.svs --model path/card.json --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(slide_path: str, options):  # type: ignore[no-untyped-def]
    from wsi_infer.models import resolve_model
    from wsi_infer.pipeline import ChunkJob, _chunk_has_tissue
    from wsi_infer.readers import open_slide
    from wsi_infer.resolution import plan_level
    from wsi_infer.tiling import geometry_for
    from wsi_infer.tissue import detect_tissue

    card = resolve_model(options.model)
    slide = open_slide(slide_path)
    assert slide.mpp is not None
    plan = plan_level(slide, slide.mpp, card.mpp)
    geometry = geometry_for(card, plan.height, plan.width, chunk_size=options.chunk_size)
    tissue = detect_tissue(slide, slide.mpp)
    job = ChunkJob(slide_path, "auto", plan, geometry, card, options.backend, options.device,
                   options.threads, False, options.batch_size, tissue, "", "uint8")
    chunks = [c for c in geometry.chunks() if _chunk_has_tissue(job, *c)]
    return card, slide, plan, geometry, job, chunks, _tiles_with_tissue(geometry, plan, tissue, chunks)


def _tiles_with_tissue(geometry, plan, tissue, chunks) -> int:  # type: ignore[no-untyped-def]
    """The tiles the pipeline runs: those of tissue chunks whose footprint holds tissue."""
    from wsi_infer.stitching import _Tile, _tile_footprint

    count = 0
    for cy, cx in chunks:
        y0, y1, x0, x1 = geometry.chunk_region(cy, cx)
        for iy in geometry.tiles_touching(geometry.y, y0, y1):
            for ix in geometry.tiles_touching(geometry.x, x0, x1):
                ty0, ty1, tx0, tx1 = _tile_footprint(geometry, _Tile(iy, ix, geometry.y.start(iy), geometry.x.start(ix)))
                count += tissue.any_in(tx0 * plan.mpp_x, ty0 * plan.mpp_y, tx1 * plan.mpp_x, ty1 * plan.mpp_y)
    return count


def phase_read(args: argparse.Namespace) -> dict[str, float]:
    """Decode and resample every tissue chunk window (chunk + halo) with the pipeline's workers."""
    from concurrent.futures import ThreadPoolExecutor

    from wsi_infer.pipeline import RunOptions
    from wsi_infer.resolution import read_target

    options = RunOptions(model=args.model, chunk_size=args.chunk_size)
    _, slide, plan, geometry, _, chunks, tiles = _plan(args.slide, options)

    def read(chunk: tuple[int, int]) -> int:
        y0, y1, x0, x1 = geometry.chunk_region(*chunk)
        h = geometry.y.halo
        window = read_target(slide, plan, max(0, x0 - h), max(0, y0 - h), min(plan.width, x1 + h),
                             min(plan.height, y1 + h))
        return window.size

    t0, c0 = time.perf_counter(), _cpu()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(read, chunks))
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": tiles}


def phase_compute(args: argparse.Namespace) -> dict[str, float]:
    """The model over the same number of tiles, held in memory, at the chosen batch size."""
    from wsi_infer.pipeline import RunOptions, _cached_predictor

    options = RunOptions(model=args.model, backend=args.backend, batch_size=args.batch_size,
                         chunk_size=args.chunk_size)
    card, _, _, geometry, _, _, tiles = _plan(args.slide, options)
    predictor = _cached_predictor(card, args.backend, "cpu", None, False)
    rng = np.random.default_rng(0)
    batch = rng.uniform(100, 250, (args.batch_size, geometry.y.tile, geometry.x.tile, 3)).astype(np.float32)
    predictor.predict(batch[:1])  # warm-up
    t0, c0 = time.perf_counter(), _cpu()
    done = 0
    while done < tiles:
        n = min(args.batch_size, tiles - done)
        predictor.predict(batch[:n])
        done += n
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": tiles}


def phase_e2e(args: argparse.Namespace) -> dict[str, float]:
    """``wsi-infer`` on the slide, as a user runs it."""
    from wsi_infer.pipeline import RunOptions, run_slide

    options = RunOptions(model=args.model, backend=args.backend, batch_size=args.batch_size,
                         chunk_size=args.chunk_size, workers=args.workers, overwrite=True)
    t0, c0 = time.perf_counter(), _cpu()
    summary = run_slide(args.slide, Path(args.scratch) / "bench-out.zarr", options)
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": summary.tiles_run,
            "inference_s": summary.timings.get("inference_s", 0.0),
            "pyramid_s": summary.timings.get("pyramid_s", 0.0)}


PHASES = {"read": phase_read, "compute": phase_compute, "e2e": phase_e2e}


def run_phase(args: argparse.Namespace, name: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--phase", name, "--slide", args.slide, "--model", args.model,
               "--backend", args.backend, "--batch-size", str(args.batch_size), "--chunk-size",
               str(args.chunk_size), "--workers", str(args.workers), "--scratch", args.scratch]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", default=None, help="slide (default: make a synthetic one)")
    parser.add_argument("--size", type=int, nargs=2, default=(20000, 15000), metavar=("W", "H"))
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/wsi-infer-bench")
    parser.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    if args.phase:
        result = PHASES[args.phase](args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    if args.slide is None:
        from wsi_infer.synthetic import make_slide

        w, h = args.size
        args.slide = str(Path(args.scratch) / f"bench-{w}x{h}.svs")
        if not Path(args.slide).exists():
            make_slide(args.slide, width=w, height=h, mpp=0.25, tissue_fraction=0.4, seed=7)
    results = {name: run_phase(args, name) for name in ("read", "compute", "e2e")}
    cores = os.cpu_count() or 1
    r, c, e = results["read"], results["compute"], results["e2e"]
    bound = max(r["seconds"], c["seconds"], (r["cpu"] + c["cpu"]) / cores)
    print(f"slide {args.slide}  model {args.model}  backend {args.backend}  batch {args.batch_size}  "
          f"cores {cores}")
    print(f"{'phase':<10}{'tiles':>8}{'wall s':>9}{'tiles/s':>9}{'CPU s':>8}{'peak RSS MB':>13}")
    for name, v in results.items():
        print(f"{name:<10}{v['tiles']:>8.0f}{v['seconds']:>9.2f}{v['tiles'] / v['seconds']:>9.2f}"
              f"{v['cpu']:>8.2f}{v['peak_rss_mb']:>13.0f}")
    print(f"bound T = max(T_read, T_compute, (CPU_read + CPU_compute) / cores) = {bound:.2f} s; "
          f"end-to-end / T = {e['seconds'] / bound:.2f}  (pyramid {e['pyramid_s']:.2f} s of it)")
    print(json.dumps({"slide": args.slide, "model": args.model, "backend": args.backend,
                      "batch_size": args.batch_size, "bound_s": bound,
                      "ratio": e["seconds"] / bound, **{k: v for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
