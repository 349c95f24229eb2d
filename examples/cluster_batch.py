#!/usr/bin/env python
"""Run a batch on a Dask cluster: an existing scheduler, or a local one for a try-out.

    # on the head node and on each worker node (same Python environment, shared storage):
    dask scheduler --port 8786
    dask worker tcp://HEAD:8786 --nworkers 1 --nthreads 1
    python examples/cluster_batch.py /shared/scans /shared/overlays --scheduler tcp://HEAD:8786

    # or, on one machine:
    python examples/cluster_batch.py /shared/scans /shared/overlays --local-workers 2

Chunks of every slide are spread over the workers; each worker loads the model once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distributed import Client, LocalCluster

from wsi_infer.batch import collect_items, run_batch
from wsi_infer.pipeline import RunOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="tissue")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="address of a running dask scheduler")
    where.add_argument("--local-workers", type=int, help="start a local cluster of N workers")
    args = parser.parse_args()

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
        threads = None
    else:
        cluster = LocalCluster(n_workers=args.local_workers, threads_per_worker=1,
                               dashboard_address=None)
        client = Client(cluster)
        threads = max(1, (os.cpu_count() or 1) // args.local_workers)
    try:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers at {client.scheduler.address}")
        report = run_batch(collect_items([args.scans]), args.out,
                           RunOptions(model=args.model, threads=threads), client=client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    print(report.counts())
    return 6 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
