#!/usr/bin/env python
"""Nightly hospital run: every new slide in a folder, resumable, with a summary report.

    python examples/nightly_batch.py /data/scans/2026-11-24 /data/overlays/2026-11-24

Run it from cron; if the machine reboots mid-run, the next run skips finished slides and
resumes the unfinished one chunk by chunk.  The exit code is 0 when every slide succeeded,
6 when some failed (see run-manifest.json and summary.txt in the output folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_infer.batch import EXIT_ALL_OK, EXIT_SOME_FAILED, collect_items, run_batch
from wsi_infer.pipeline import RunOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path, help="folder of slides")
    parser.add_argument("out", type=Path, help="folder for overlays and reports")
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--glob", default="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    items = collect_items([args.scans], args.glob)
    report = run_batch(items, args.out, RunOptions(model=args.model, device="auto"))

    lines = [f"wsi-infer nightly run {report.started} .. {report.finished}",
             f"slides: {len(report.slides)}  " + "  ".join(f"{k}: {v}" for k, v in report.counts().items())]
    for record in report.slides:
        detail = record.error if record.status == "failed" else f"{record.tiles_run} tiles"
        lines.append(f"  {record.status:<8} {Path(record.slide).name:<40} {record.seconds or 0:7.1f} s  {detail}")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return EXIT_SOME_FAILED if report.failed else EXIT_ALL_OK


if __name__ == "__main__":
    sys.exit(main())
