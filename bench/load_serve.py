#!/usr/bin/env python
"""Load generator for ``wsi-infer serve``: throughput and latency against --max-batch/--max-wait-ms.

For each (max-batch, max-wait) setting it starts the real service on a synthetic slide, then
either N concurrent clients send one-tile requests back to back (closed loop), or requests
arrive at a fixed rate whatever the answers (open loop; latency counts from the planned
arrival, so a slow server cannot hide its queue).  Prints a markdown table and writes a plot
of p50 latency against throughput, one curve per max-wait.

    python bench/load_serve.py --repeat 2 --rates 10 20          # the sweep in docs/serve.md
    python bench/load_serve.py --max-batch 16 --max-wait 0 5 --clients 1 8 --seconds 2
    python bench/load_serve.py --rates 50 100 150 --max-batch 16 --max-wait 0 10
    python bench/load_serve.py --model path/card.json --device cuda --tile-size 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
EXE = str(Path(sys.executable).parent / "wsi-infer")


@dataclass
class Result:
    """One measurement."""

    max_batch: int
    max_wait_ms: float
    mode: str  # "clients" or "rate"
    load: float  # clients, or requests/s offered
    requests: int
    errors: int
    throughput: float  # answered requests/s
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float


def median_of(runs: list[Result]) -> Result:
    """One result from repeated runs of a measurement: medians, total requests and errors."""
    first = runs[0]

    def med(name: str) -> float:
        return float(np.median([getattr(r, name) for r in runs]))

    return Result(first.max_batch, first.max_wait_ms, first.mode, first.load,
                  sum(r.requests for r in runs), sum(r.errors for r in runs), med("throughput"),
                  med("p50_ms"), med("p95_ms"), med("p99_ms"), med("mean_batch"))


class Service:
    """A ``wsi-infer serve`` subprocess on a free local port."""

    def __init__(self, root: Path, args: argparse.Namespace, max_batch: int,
                 max_wait_ms: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [EXE, "serve", "--slides-root", str(root), "--model", args.model,
                   "--backend", args.backend, "--device", args.device, "--port", str(port),
                   "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                   "--max-queue", "4096"]
        if args.tile_size:
            command += ["--tile-size", str(args.tile_size)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service did not start: {' '.join(command)}")

    def batches(self) -> tuple[float, float]:
        """(tiles, batches) run so far, from /metrics."""
        tiles = batches = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("wsi_infer_batch_size_tiles_sum"):
                tiles += float(line.rsplit(" ", 1)[1])
            elif line.startswith("wsi_infer_batch_size_tiles_count"):
                batches += float(line.rsplit(" ", 1)[1])
        return tiles, batches

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def make_slide(folder: Path, tile: int, model_mpp: float) -> tuple[str, list[dict[str, int]]]:
    """A synthetic SVS whose level 1 is at the model's mpp, and one-tile requests over it."""
    from wsi_infer.synthetic import make_slide as synthesize

    slide_mpp = model_mpp / 4  # SVS levels are 4x apart: level 1 is read without resampling
    tiles_x, tiles_y = 12, 8
    step = tile * 4  # level-0 pixels per tile
    path = folder / "load.svs"
    if not path.exists():
        synthesize(path, width=tiles_x * step, height=tiles_y * step, mpp=slide_mpp, kind="svs")
    regions = [{"x": ix * step, "y": iy * step, "width": step, "height": step}
               for iy in range(tiles_y) for ix in range(tiles_x)]
    return path.name, regions


async def closed_loop(url: str, slide: str, regions: list[dict[str, int]], clients: int,
                      seconds: float) -> tuple[list[float], int, float]:
    """``clients`` clients, each sending one-tile requests back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        stop = started + seconds

        async def client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await http.post("/v1/infer", json={"slide": slide, **rng.choice(regions)})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        return latencies, errors, time.perf_counter() - started


async def open_loop(url: str, slide: str, regions: list[dict[str, int]], rate: float,
                    seconds: float) -> tuple[list[float], int, float]:
    """Requests arriving every ``1/rate`` s for ``seconds``; latency from planned arrival."""
    latencies: list[float] = []
    errors = 0
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def request(planned: float, region: dict[str, int]) -> None:
            nonlocal errors
            r = await http.post("/v1/infer", json={"slide": slide, **region})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - planned)
            else:
                errors += 1

        started = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            planned = started + i / rate
            await asyncio.sleep(max(0.0, planned - time.perf_counter()))
            tasks.append(asyncio.create_task(request(planned, rng.choice(regions))))
        await asyncio.gather(*tasks)
        return latencies, errors, time.perf_counter() - started


def measure(service: Service, slide: str, regions: list[dict[str, int]], mode: str,
            load: float, seconds: float, max_batch: int, max_wait: float) -> Result:
    tiles0, batches0 = service.batches()
    if mode == "clients":
        lat, errors, took = asyncio.run(closed_loop(service.url, slide, regions, int(load), seconds))
    else:
        lat, errors, took = asyncio.run(open_loop(service.url, slide, regions, load, seconds))
    tiles1, batches1 = service.batches()
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean_batch = (tiles1 - tiles0) / max(1.0, batches1 - batches0)
    return Result(max_batch, max_wait, mode, load, len(lat), errors, len(lat) / took, float(p50),
                  float(p95), float(p99), mean_batch)


def table(results: list[Result]) -> str:
    lines = [("| max-batch | max-wait ms | load | req/s | p50 ms | p95 ms | p99 ms | mean batch "
              "| errors |"), "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        load = f"{int(r.load)} clients" if r.mode == "clients" else f"{r.load:g} req/s offered"
        lines.append(f"| {r.max_batch} | {r.max_wait_ms:g} | {load} | {r.throughput:.1f} | "
                     f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.mean_batch:.2f} | "
                     f"{r.errors} |")
    return "\n".join(lines)


def pivot(results: list[Result]) -> str:
    """One row per setting: req/s and p50 for each client count, p50/p95/p99 for each rate."""
    clients = sorted({r.load for r in results if r.mode == "clients"})
    rates = sorted({r.load for r in results if r.mode == "rate"})
    head = ["max-batch", "max-wait ms"]
    head += [f"{c:g} client{'s' if c > 1 else ''}: req/s, p50 ms" for c in clients]
    head += [f"{q:g} req/s offered: p50/p95/p99 ms" for q in rates]
    head += [f"mean batch, {clients[-1]:g} clients" if clients else "mean batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    cells: dict[tuple[int, float], dict[tuple[str, float], Result]] = {}
    for r in results:
        cells.setdefault((r.max_batch, r.max_wait_ms), {})[(r.mode, r.load)] = r
    for (max_batch, max_wait), row in cells.items():
        out = [str(max_batch), f"{max_wait:g}"]
        for c in clients:
            got = row.get(("clients", c))
            out.append(f"{got.throughput:.1f}, {got.p50_ms:.0f}" if got else "")
        for q in rates:
            got = row.get(("rate", q))
            out.append("" if got is None else f"{got.p50_ms:.0f} / {got.p95_ms:.0f} / "
                       f"{got.p99_ms:.0f}" + (f" ({got.errors} errors)" if got.errors else ""))
        most = row.get(("clients", clients[-1])) if clients else None
        out.append(f"{most.mean_batch:.1f}" if most else "")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def plot(results: list[Result], path: Path, title: str) -> None:
    """p50 latency against throughput of the closed-loop runs: one panel per max-batch, one
    curve per max-wait, points in order of the number of clients."""
    panels: dict[int, dict[float, list[tuple[float, float]]]] = {}
    for r in sorted(results, key=lambda r: r.load):
        if r.mode == "clients":
            panels.setdefault(r.max_batch, {}).setdefault(r.max_wait_ms, []).append(
                (r.throughput, r.p50_ms))
    if not panels:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pil(panels, path, title)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), dpi=110,
                             sharex=True, sharey=True, squeeze=False)
    waits = sorted({w for curves in panels.values() for w in curves})
    for ax, (max_batch, curves) in zip(axes[0], sorted(panels.items()), strict=True):
        for wait in waits:
            if wait in curves:
                xs, ys = zip(*curves[wait], strict=True)
                ax.plot(xs, ys, marker="o", color=PALETTE[waits.index(wait) % len(PALETTE)],
                        label=f"max-wait {wait:g} ms")
        ax.set_title(f"max-batch {max_batch}", fontsize=10)
        ax.set_xlabel("requests/s (one tile each)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("p50 latency (ms)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _plot_pil(panels: dict[int, dict[float, list[tuple[float, float]]]], path: Path,
              title: str) -> None:
    """The same plot drawn with Pillow (when matplotlib is not installed)."""
    from PIL import Image, ImageDraw, ImageFont

    pw, ph, left, top, bottom, gap = 330, 330, 60, 50, 50, 20
    waits = sorted({w for curves in panels.values() for w in curves})
    width = left + len(panels) * (pw + gap) + 130
    image = Image.new("RGB", (width, top + ph + bottom), "white")
    draw = ImageDraw.Draw(image)
    try:
        draw.font = ImageFont.load_default(size=13)  # type: ignore[assignment]
    except TypeError:  # Pillow < 10.1: the small bitmap font
        pass
    points = [p for curves in panels.values() for pts in curves.values() for p in pts]
    x_max = _nice(max(p[0] for p in points))
    y_max = _nice(max(p[1] for p in points))
    draw.text((left, 10), title, fill="black")
    draw.text((8, top - 18), "p50 latency (ms)", fill="black")
    for k, (max_batch, curves) in enumerate(sorted(panels.items())):
        x0 = left + k * (pw + gap)

        def xy(x: float, y: float, x0: int = x0) -> tuple[float, float]:
            return x0 + x / x_max * pw, top + ph - y / y_max * ph

        for i in range(6):
            gx, gy = xy(x_max * i / 5, y_max * i / 5)
            draw.line([gx, top, gx, top + ph], fill="#e8e8e8")
            draw.line([x0, gy, x0 + pw, gy], fill="#e8e8e8")
            draw.text((gx - 8, top + ph + 4), f"{x_max * i / 5:g}", fill="black")
            if k == 0:
                draw.text((x0 - 45, gy - 6), f"{y_max * i / 5:g}", fill="black")
        draw.rectangle([x0, top, x0 + pw, top + ph], outline="black")
        draw.text((x0 + pw // 2 - 40, top - 16), f"max-batch {max_batch}", fill="black")
        draw.text((x0 + pw // 2 - 80, top + ph + 22), "requests/s (one tile each)", fill="black")
        for wait, pts in curves.items():
            color = PALETTE[waits.index(wait) % len(PALETTE)]
            line = [xy(*p) for p in pts]
            if len(line) > 1:
                draw.line(line, fill=color, width=2)
            for px, py in line:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    lx = left + len(panels) * (pw + gap)
    for i, wait in enumerate(waits):
        color = PALETTE[i % len(PALETTE)]
        ly = top + 10 + 18 * i
        draw.line([lx, ly + 6, lx + 22, ly + 6], fill=color, width=3)
        draw.text((lx + 28, ly), f"max-wait {wait:g} ms", fill="black")
    image.save(path)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    power = 10 ** np.floor(np.log10(max(value, 1e-9)))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tissue", help="built-in name or card (default: tissue)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=256,
                        help="output px per tile: one request = one tile (default: 256)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-wait", type=float, nargs="+", default=[0, 2, 5, 10, 20])
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16, 32],
                        help="closed loop: concurrent clients (default: 1 4 16 32)")
    parser.add_argument("--rates", type=float, nargs="*", default=[],
                        help="open loop: fixed arrival rates in requests/s (default: none)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default: 3)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all settings; the "
                        "table shows medians (default: 1)")
    parser.add_argument("--plot", type=Path, default=HERE.parent / "docs/images/serve-latency.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the runs as JSON")
    parser.add_argument("--from-json", type=Path, default=None, help="only redraw the table and "
                        "plot from a --json file")
    args = parser.parse_args()

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        title = saved["title"]
        runs: dict[tuple[int, float, str, float], list[Result]] = {}
        for item in saved["runs"]:
            r = Result(**item)
            runs.setdefault((r.max_batch, r.max_wait_ms, r.mode, r.load), []).append(r)
    else:
        title, runs = sweep(args)
    results = [median_of(r) for r in runs.values()]
    print(f"{title}\n\n{pivot(results)}\n\n{table(results)}")
    plot(results, args.plot, title)
    if args.json:
        args.json.write_text(json.dumps({"title": title, "runs": [
            asdict(r) for rs in runs.values() for r in rs]}, indent=1))
    return 0


def sweep(args: argparse.Namespace) -> tuple[str, dict[tuple[int, float, str, float],
                                                      list[Result]]]:
    """Run every setting and load ``args.repeat`` times; the title and the runs by key."""
    from wsi_infer.models import resolve_model

    card = resolve_model(args.model)
    settings = [(b, w) for b in args.max_batch for w in args.max_wait if b > 1 or w == 0]
    loads = [("clients", float(c)) for c in args.clients] + [("rate", r) for r in args.rates]
    runs: dict[tuple[int, float, str, float], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="load-serve-") as tmp:
        slide, regions = make_slide(Path(tmp), args.tile_size, card.mpp)
        for _ in range(args.repeat):  # rounds over all settings: slow drifts in load average out
            for max_batch, max_wait in settings:
                service = Service(Path(tmp), args, max_batch, max_wait)
                try:
                    asyncio.run(closed_loop(service.url, slide, regions, 2, 1.0))  # warm up
                    for mode, load in loads:
                        result = measure(service, slide, regions, mode, load, args.seconds,
                                         max_batch, max_wait)
                        runs.setdefault((max_batch, max_wait, mode, load), []).append(result)
                        print(json.dumps(asdict(result)), file=sys.stderr)
                finally:
                    service.stop()
    title = (f"wsi-infer serve: {card.name}, {args.tile_size}px tiles, {args.backend} "
             f"{args.device}, {os.cpu_count()} CPU cores")
    if args.repeat > 1:
        title += f", median of {args.repeat} rounds"
    return title, runs

if __name__ == "__main__":
    sys.exit(main())
