#!/usr/bin/env python
"""Memory scales with the chunk, not the slide: peak RSS of ``wsi-infer`` on slides of growing
size, each run in its own process, and the ratio of the largest slide's peak to the smallest's.

    python bench/bench_memory.py                     # 20,000² and 100,000² synthetic SVS, nuclei model
    python bench/bench_memory.py --sizes 20000 40000 --model tissue

The synthetic slides (0.25 µm/px, ~40 % tissue, JPEG tiles) are made once in the scratch folder;
the 100,000² one takes ~6 min and 0.7 GB of disk.  Besides the peak, each child samples its RSS
every 0.5 s, so the table also shows the RSS in the middle of the run (flat = no growth).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(slide: str, model: str, out: str, workers: int) -> dict[str, float]:
    """Run one slide end to end; RSS samples are taken by a thread while it runs."""
    from wsi_infer.pipeline import RunOptions, run_slide

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.perf_counter() - start, _rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = run_slide(slide, out, RunOptions(model=model, workers=workers, overwrite=True))
    stop.set()
    sampler.join()
    inference = [rss for t, rss in samples if summary.timings["tissue_s"] < t < summary.seconds * 0.9]
    return {"seconds": summary.seconds, "tiles": summary.tiles_run,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_mid_mb": inference[len(inference) // 2] if inference else 0.0,
            "rss_late_mb": inference[-1] if inference else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000],
                        help="side of each square synthetic slide (px at 0.25 µm/px)")
    parser.add_argument("--slides", nargs="+", default=None, help="use these slides instead")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/wsi-infer-bench")
    parser.add_argument("--child", nargs=2, metavar=("SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.model, args.child[1], args.workers)))
        return 0
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    slides = args.slides
    if slides is None:
        from wsi_infer.synthetic import make_slide

        slides = []
        for side in args.sizes:
            path = scratch / f"bench-{side}x{side}.svs"
            if not path.exists():
                print(f"making {path} ...", flush=True)
                make_slide(path, width=side, height=side, mpp=0.25, tissue_fraction=0.4, seed=7)
            slides.append(str(path))
    print(f"model {args.model}  workers {args.workers}")
    print(f"{'slide':<36}{'tiles':>8}{'wall s':>9}{'RSS mid MB':>12}{'RSS late MB':>13}{'peak RSS MB':>13}")
    rows = []
    for slide in slides:
        out = scratch / "memory-out.zarr"
        command = [sys.executable, __file__, "--child", slide, str(out), "--model", args.model,
                   "--workers", str(args.workers)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True)
                            .stdout.strip().splitlines()[-1])
        rows.append({"slide": slide, **result})
        print(f"{Path(slide).name:<36}{result['tiles']:>8}{result['seconds']:>9.1f}"
              f"{result['rss_mid_mb']:>12.0f}{result['rss_late_mb']:>13.0f}{result['peak_rss_mb']:>13.0f}",
              flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS, last slide / first slide = {ratio:.2f}  (target: within 20 %, i.e. <= 1.20)")
    print(json.dumps({"model": args.model, "ratio": ratio, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
