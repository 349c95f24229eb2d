#!/usr/bin/env python
"""Run the same model on the same slide with wsi-infer and its peers (TIAToolbox, MONAI, WSInfer).

    /tmp/peers-venv/bin/python bench/bench_peers.py [--slide S] [--tools tiatoolbox monai wsinfer]
        [--wsi-infer-python /work/main/.venv/bin/python] [--scratch /tmp/peers-out]

Prints a table (tool, tiles, wall s, tiles/s, CPU s, peak RSS MB, tree PSS MB, agreement) and
a final JSON line.  Run with the peers' venv (torch 2.13 CPU, tiatoolbox 2.1.3, monai 1.6.1,
wsinfer 0.6.1; built by ``bash bench/peers/setup_venv.sh``); wsi-infer runs with its own venv.

What is measured.  Every row is one child process, run one after the other: wall seconds from
start to exit (interpreter start-up and imports included, as a user sees them), CPU seconds
(user + sys of the child and its reaped children, i.e. data-loader workers, from ``wait4``),
peak RSS (the largest single process of the tree, from ``wait4``'s ``ru_maxrss``) and tree
PSS (the sum of the proportional set sizes of the child and its descendants, sampled every
0.25 s: counts forked data-loader workers once each, without double counting shared pages).
"run s" is the tool's own call only (no start-up), as the runner timed it.

The model is ``models/nuclei`` (0.5 µm/px, fully convolutional, 16-px receptive margin,
sigmoid), its TorchScript for every peer (``torch.jit.load``), with the card's
preprocessing: RGB, ``(p/255 − 0.5)/0.25``, NCHW float32.  wsi-infer itself runs as a user
runs it: ``wsi-infer SLIDE --model nuclei`` (onnxruntime, its defaults: 2 tiles per call on
CPUs, 544-px tiles on a 512 grid, 2 Dask workers, all cores, its tissue mask); a second row,
"wsi-infer/torch", adds ``--backend torch`` so that one wsi-infer row runs the same runtime as
the peers (torch, the same TorchScript, at wsi-infer's default for torch on CPUs: 1 tile per
call) and runtime and pipeline effects can
be told apart (``--no-torch-row`` skips it).  The peers, on CPU, batch 8 (``--batch-size``),
2 torch threads, 2 data-loader workers, each with its own resolution handling and tissue
masking:

* TIAToolbox 2.1.3 (bench/peers/run_tiatoolbox.py): ``SemanticSegmentor`` with the TorchScript
  wrapped in a ``ModelABC``; ``IOSegmentorConfig`` at ``{"units": "mpp", "resolution": 0.5}``,
  input 544, output 512 (centre crop: exact, as the margin is the receptive field), stride
  512; its Otsu tissue mask (``auto_get_mask``); output in its own zarr; compared per pixel.
* MONAI 1.6.1 (bench/peers/run_monai.py): ``WSIReader(backend="openslide")``, the level
  within MONAI's mpp tolerance of 0.5 µm/px or the finest level read 2× larger and
  ``Resized(mode="area")``; ``ForegroundMask(hsv_threshold={"S": "otsu"})`` on the coarsest
  level (as ``MaskedPatchWSIDataset``); 544-px windows on a 512 grid via ``PatchWSIDataset``
  + ``DataLoader``; the central 512 px into a uint8 numpy memmap; compared per pixel.
* WSInfer 0.6.1 (bench/peers/run_wsinfer.py): a patch classifier, so the model is a traced
  wrapper (FCN over a 544-px patch → mean nuclei probability over its central 512 px); its
  own tissue detection and patching, 544-px patches at 0.5 µm/px (read at level 0, Resize),
  overlap 32/544 so patches step 512 px like wsi-infer's tiles.  The ``wsinfer run`` CLI
  cannot start offline (it downloads its zoo registry at import), so the runner calls the
  library functions that command calls.  Pixel agreement does not apply; "patch |Δ|"
  compares each patch's value with wsi-infer's mean p over the same square.

What is and isn't comparable.  Same model, weights (TorchScript in the peers, the equivalent
ONNX in wsi-infer: max logit difference 3.8e-6), resolution, tile size, batch and thread
budget.  Not the same: the area each tool decides is tissue (so "tiles" differ: compare
tiles/s, and see "cov", the share of wsi-infer's tissue pixels the peer computed), the
resampling filter for 0.25 → 0.5 µm/px (wsi-infer: triangle filter, weights 1 3 3 1 / 8; TIAToolbox: its own
interpolation; MONAI: area = 2×2 mean; WSInfer: PIL bilinear with antialias), the slide
reader (wsi-infer: tifffile; the peers: OpenSlide), the runtime (onnxruntime vs torch), and
the output (wsi-infer: a finished multiscale OME-Zarr; TIAToolbox: a zarr probability map;
MONAI: a raw memmap; WSInfer: a CSV + GeoJSON of patch scores).

Agreement (bench/peers/compare.py, in wsi-infer's venv): peer maps are sampled at the
centres of wsi-infer's level-0 pixels in µm (so 0.499 vs 0.5 µm/px grids line up), on
wsi-infer's tissue pixels (its detector without the safety margin) that both computed:
mean |Δp|, share of pixels whose masks at p ≥ 0.5 agree, Dice of those masks.  On a slide
whose level 0 is already ~0.5 µm/px (CMU-1: 0.499) wsi-infer and MONAI read it as is, while
TIAToolbox resamples it by 0.998 to exactly 0.5 µm/px (an interpolation of every pixel and a
drift of up to ~1 px): its agreement there is lower for that reason, not a model difference;
on the 0.25 µm/px benchmark slide all tools shrink exactly 2×.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
DEFAULT_SLIDE = "/tmp/wsi-infer-bench/bench-20000x15000.svs"
TOOLS = ("tiatoolbox", "monai", "wsinfer")


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _pss_mb(pid: int) -> float:
    """Proportional set size of one process (MB), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeSampler(threading.Thread):
    """Samples the PSS of a process tree until stopped; keeps the peak."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.peak_mb = pid, period, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            total = sum(_pss_mb(p) for p in [self.pid, *_children(self.pid)])
            self.peak_mb = max(self.peak_mb, total)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mb


def run_child(name: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run one row's process; its wall, CPU, peak RSS, tree PSS and last JSON stdout line."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    tree_pss = sampler.stop()
    row = {"tool": name, "returncode": proc.returncode, "seconds": wall,
           "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
           "tree_pss_mb": tree_pss, "log": str(log)}
    lines = log.read_text(errors="replace").strip().splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                row["result"] = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if proc.returncode != 0:
        row["error"] = next((ln for ln in reversed(lines) if ln.strip()), "no output")[-300:]
    return row


def ensure_slide(path: str, wsi_python: str) -> None:
    """Make the default synthetic benchmark slide when it is missing (as bench_pipeline.py)."""
    if Path(path).exists():
        return
    code = ("import sys; from wsi_infer.synthetic import make_slide; make_slide(sys.argv[1], "
            "width=20000, height=15000, mpp=0.25, tissue_fraction=0.4, seed=7)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([wsi_python, "-c", code, path], check=True)


def wsi_infer_row(args: argparse.Namespace, backend: str = "onnxruntime") -> dict:
    """``wsi-infer SLIDE --model nuclei --out SCRATCH/wsi-infer.zarr --overwrite`` (its
    defaults; ``backend="torch"`` adds ``--backend torch``: the same TorchScript the peers run)."""
    exe = Path(args.wsi_infer_python).parent / "wsi-infer"
    cli = [str(exe)] if exe.exists() else [args.wsi_infer_python, "-m", "wsi_infer.cli"]
    name = "wsi-infer" if backend == "onnxruntime" else f"wsi-infer/{backend}"
    out = Path(args.scratch) / f"{name.replace('/', '-')}.zarr"
    extra = [] if backend == "onnxruntime" else ["--backend", backend]
    row = run_child(name, [*cli, args.slide, "--model", "nuclei", "--out", str(out), "--overwrite",
                           "--log-json", *extra], Path(args.scratch) / f"{name.replace('/', '-')}.log")
    summary = row.get("result", {})
    row["tiles"] = summary.get("tiles_run", -1)
    row["run_seconds"] = summary.get("seconds", float("nan"))
    row["output"] = str(out)
    return row


def peer_row(args: argparse.Namespace, tool: str) -> dict:
    """One peer's runner in the peers' venv (this interpreter)."""
    scratch = Path(args.scratch)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "WSI_INFER_PEERS_BATCH": str(args.batch_size)}
    row = run_child(tool, [sys.executable, str(PEERS / f"run_{tool}.py"), args.slide, str(scratch)],
                    scratch / f"{tool}.log", env)
    result = row.get("result", {})
    row["tiles"] = result.get("tiles", -1)
    row["run_seconds"] = result.get("inner_seconds", float("nan"))
    row["output"] = result.get("output")
    return row


def agreement(args: argparse.Namespace, rows: dict[str, dict]) -> dict:
    """Export the peers' outputs and compare them with wsi-infer's (not timed)."""
    scratch = Path(args.scratch)
    command = [args.wsi_infer_python, str(PEERS / "compare.py"), args.slide, rows["wsi-infer"]["output"]]
    if rows.get("tiatoolbox", {}).get("returncode") == 0:
        result = scratch / "tiatoolbox.result.json"
        result.write_text(json.dumps(rows["tiatoolbox"]["result"]))
        subprocess.run([sys.executable, str(PEERS / "run_tiatoolbox.py"), args.slide, str(scratch),
                        "--export", str(result)], check=True, capture_output=True)
        command += ["--map", f"tiatoolbox={scratch / 'tiatoolbox-map'}"]
    if rows.get("wsi-infer/torch", {}).get("returncode") == 0:
        command += ["--map", f"wsi-infer/torch={rows['wsi-infer/torch']['output']}"]
    if rows.get("monai", {}).get("returncode") == 0:
        command += ["--map", f"monai={scratch / 'monai-map'}"]
    if rows.get("wsinfer", {}).get("returncode") == 0:
        command += ["--patches", f"wsinfer={rows['wsinfer']['output']}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compare failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _agreement_text(agree: dict) -> str:
    if "mean_abs_dp" in agree:
        return (f"|Δp| {agree['mean_abs_dp']:.4f}  mask {agree['mask_agreement']:.4f}  "
                f"Dice {agree['dice']:.3f}  cov {agree['coverage']:.2f}")
    if "patch_mean_abs_dp" in agree:
        return f"n/a (patch |Δ| {agree['patch_mean_abs_dp']:.4f} over {agree['patches']} patches)"
    return agree.get("error", "reference")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", default=DEFAULT_SLIDE)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--wsi-infer-python", default=str(HERE.parent / ".venv" / "bin" / "python"))
    parser.add_argument("--scratch", default="/tmp/peers-out")
    parser.add_argument("--batch-size", type=int, default=8, help="the peers' batch size (default: 8)")
    parser.add_argument("--no-torch-row", action="store_true",
                        help="skip the second wsi-infer row with --backend torch")
    args = parser.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    ensure_slide(args.slide, args.wsi_infer_python)
    args.slide = str(Path(args.slide).resolve())

    rows = {"wsi-infer": wsi_infer_row(args)}
    if not args.no_torch_row:
        rows["wsi-infer/torch"] = wsi_infer_row(args, "torch")
    for tool in args.tools:
        rows[tool] = peer_row(args, tool)
    agree = agreement(args, rows) if rows["wsi-infer"]["returncode"] == 0 else {}
    for name, row in rows.items():
        row["agreement"] = agree.get(name, {} if name == "wsi-infer" else {"error": "not compared"})

    print(f"slide {args.slide}  model nuclei (0.5 µm/px)  peers' batch {args.batch_size}  "
          f"cores {os.cpu_count()}")
    print(f"{'tool':<16}{'tiles':>7}{'wall s':>9}{'run s':>8}{'tiles/s':>9}{'CPU s':>8}"
          f"{'peak RSS MB':>13}{'tree PSS MB':>13}  agreement with wsi-infer")
    for name, row in rows.items():
        if row["returncode"] != 0:
            print(f"{name:<16} FAILED (exit {row['returncode']}): {row.get('error', '')}  log: {row['log']}")
            continue
        rate = row["tiles"] / row["seconds"] if row["seconds"] > 0 else 0.0
        print(f"{name:<16}{row['tiles']:>7}{row['seconds']:>9.2f}{row['run_seconds']:>8.2f}{rate:>9.2f}"
              f"{row['cpu']:>8.2f}{row['peak_rss_mb']:>13.0f}{row['tree_pss_mb']:>13.0f}  "
              f"{_agreement_text(row['agreement']) if name != 'wsi-infer' else 'reference'}")
    keep = ("tiles", "seconds", "run_seconds", "cpu", "peak_rss_mb", "tree_pss_mb", "returncode",
            "agreement", "error")
    print(json.dumps({"slide": args.slide, "model": "nuclei", "peers_batch_size": args.batch_size, "cores": os.cpu_count(),
                      "rows": {n: {k: r[k] for k in keep if k in r} for n, r in rows.items()}}))
    return 0 if all(r["returncode"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
