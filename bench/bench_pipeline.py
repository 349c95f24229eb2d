#!/usr/bin/env python
"""Measure read-only, compute-only and end-to-end throughput on one slide and model, and the
end-to-end time against the bound no pipeline on this machine can beat:

    T = max(T_read, T_compute, (CPU_read + CPU_compute) / cores)

Each phase runs in its own process so its peak RSS is its own.  Prints a table and a JSON line.

    python bench/bench_pipeline.py        # 40,000 x 30,000 synthetic SVS; nuclei + tissue; onnxruntime + torch
    python bench/bench_pipeline.py --models heavy --size 20000 15000    # ResNet-18 U-Net
    python bench/bench_pipeline.py --slide x.svs --models path/card.json --backends torch --device cuda --fp16
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
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(slide_path: str, options):  # type: ignore[no-untyped-def]
    """The run's own plan (wsi_infer.plan.plan_run, with its tissue mask), the slide, the
    chunks it computes and the tiles it runs."""
    from wsi_infer.models import resolve_model
    from wsi_infer.plan import plan_run
    from wsi_infer.readers import open_slide
    from wsi_infer.tissue import detect_tissue

    card = resolve_model(options.model)
    slide = open_slide(slide_path)
    plan = plan_run(slide, card, options)
    plan = plan.with_tissue(detect_tissue(slide, plan.mpp))
    chunks = plan.chunks()
    return plan, slide, chunks, plan.tiles_to_run(chunks)


def phase_read(args: argparse.Namespace) -> dict[str, float]:
    """Decode and resample every tissue chunk window (chunk + halo) with the pipeline's workers."""
    from concurrent.futures import ThreadPoolExecutor

    from wsi_infer.pipeline import RunOptions

    options = RunOptions(model=args.model, chunk_size=args.chunk_size)
    plan, slide, chunks, tiles = _plan(args.slide, options)
    geometry = plan.geometry

    def read(chunk: tuple[int, int]) -> int:
        window = geometry.chunk_region(*chunk).grown(geometry.y.halo)
        return plan.read(slide, window.clipped(geometry.width, geometry.height)).size

    t0, c0 = time.perf_counter(), _cpu()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(read, chunks))
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": tiles}


def phase_compute(args: argparse.Namespace) -> dict[str, float]:
    """The model over the same number of tiles, held in memory, at the chosen batch size."""
    from wsi_infer.pipeline import RunOptions
    from wsi_infer.resources import Resources

    options = RunOptions(model=args.model, backend=args.backend, batch_size=args.batch_size,
                         chunk_size=args.chunk_size)
    plan, _, _, tiles = _plan(args.slide, options)
    geometry = plan.geometry
    predictor = Resources().predictor(plan.card, args.backend, args.device, None, args.fp16)
    rng = np.random.default_rng(0)
    batch_size = predictor.batch_size(args.batch_size)  # what wsi-infer uses on this device
    batch = rng.uniform(100, 250, (batch_size, geometry.y.tile, geometry.x.tile, 3)).astype(np.float32)
    predictor.predict(batch[:1])  # warm-up
    t0, c0 = time.perf_counter(), _cpu()
    done = 0
    while done < tiles:
        n = min(batch_size, tiles - done)
        predictor.predict(batch[:n])
        done += n
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": tiles,
            "batch_size": batch_size}


def phase_e2e(args: argparse.Namespace) -> dict[str, float]:
    """``wsi-infer`` on the slide, as a user runs it."""
    from wsi_infer.pipeline import RunOptions, run_slide

    options = RunOptions(model=args.model, backend=args.backend, device=args.device, fp16=args.fp16,
                         batch_size=args.batch_size, chunk_size=args.chunk_size, workers=args.workers,
                         overwrite=True)
    t0, c0 = time.perf_counter(), _cpu()
    summary = run_slide(args.slide, Path(args.scratch) / "bench-out.zarr", options)
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu() - c0, "tiles": summary.tiles_run,
            "inference_s": summary.timings.get("inference_s", 0.0),
            "pyramid_s": summary.timings.get("pyramid_s", 0.0)}


PHASES = {"read": phase_read, "compute": phase_compute, "e2e": phase_e2e}


def run_phase(args: argparse.Namespace, name: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--phase", name, "--slide", args.slide, "--model", args.model,
               "--backend", args.backend, "--device", args.device, "--chunk-size", str(args.chunk_size),
               *(["--batch-size", str(args.batch_size)] if args.batch_size else []), "--workers", str(args.workers),
               "--scratch", args.scratch, *(["--fp16"] if args.fp16 else [])]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def heavy_card(scratch: Path) -> str:
    """The ResNet-18 U-Net of bench/heavy_unet.py, made once in the scratch folder."""
    card = scratch / "heavy" / "card.json"
    if not card.exists():
        subprocess.run([sys.executable, str(HERE / "heavy_unet.py"), "--out", str(card.parent)], check=True)
    return str(card)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The three phases of one model and backend, and the bound."""
    results = {name: run_phase(args, name) for name in ("read", "compute", "e2e")}
    cores = os.cpu_count() or 1
    r, c, e = results["read"], results["compute"], results["e2e"]
    bound = max(r["seconds"], c["seconds"], (r["cpu"] + c["cpu"]) / cores)
    return {"slide": args.slide, "model": args.label, "backend": args.backend, "device": args.device,
            "fp16": args.fp16, "batch_size": c["batch_size"], "cores": cores, "bound_s": bound,
            "ratio": e["seconds"] / bound, **results}


def print_row(row: dict[str, Any]) -> None:
    r, c, e = row["read"], row["compute"], row["e2e"]
    print(f"{row['model']:<10}{row['backend']:<12}{e['tiles']:>6.0f}"
          f"{r['seconds']:>8.1f}{r['cpu']:>7.1f}{c['seconds']:>8.1f}{c['cpu']:>7.1f}"
          f"{e['seconds']:>8.1f}{e['cpu']:>7.1f}{e['tiles'] / e['seconds']:>8.2f}"
          f"{row['bound_s']:>8.1f}{row['ratio']:>7.2f}"
          f"{r['peak_rss_mb']:>7.0f}{c['peak_rss_mb']:>7.0f}{e['peak_rss_mb']:>7.0f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", default=None, help="slide (default: make a synthetic one)")
    parser.add_argument("--size", type=int, nargs=2, default=(40000, 30000), metavar=("W", "H"),
                        help="size of the synthetic slide (0.25 µm/px, ~40 %% tissue)")
    parser.add_argument("--models", nargs="+", default=["nuclei", "tissue"],
                        help="built-in names, card paths, or 'heavy' (ResNet-18 U-Net)")
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per model call (default: wsi-infer's default for the device)")
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/wsi-infer-bench")
    parser.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if args.phase:
        result = PHASES[args.phase](args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    if args.slide is None:
        from wsi_infer.synthetic import make_slide

        w, h = args.size
        args.slide = str(scratch / f"bench-{w}x{h}.svs")
        if not Path(args.slide).exists():
            make_slide(args.slide, width=w, height=h, mpp=0.25, tissue_fraction=0.4, seed=7)
    print(f"slide {args.slide}  device {args.device}{' fp16' if args.fp16 else ''}  "
          f"batch {args.batch_size or 'default'}  chunk {args.chunk_size}  workers {args.workers}  "
          f"cores {os.cpu_count()}")
    print(f"{'':<22}{'':>6}{'-- read --':>15}{'- compute -':>15}{'--- end to end ---':>23}"
          f"{'':>15}{'peak RSS MB':>21}")
    print(f"{'model':<10}{'backend':<12}{'tiles':>6}{'wall s':>8}{'CPU s':>7}{'wall s':>8}{'CPU s':>7}"
          f"{'wall s':>8}{'CPU s':>7}{'tiles/s':>8}{'T s':>8}{'e2e/T':>7}"
          f"{'read':>7}{'comp':>7}{'e2e':>7}")
    rows = []
    for model in args.models:
        for backend in args.backends:
            args.label = Path(model).parent.name if model.endswith(".json") else model
            args.model = heavy_card(scratch) if model == "heavy" else model
            args.backend = backend
            rows.append(measure(args))
            print_row(rows[-1])
    print("T = max(T_read, T_compute, (CPU_read + CPU_compute) / cores): no pipeline on this machine "
          "can beat it")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
