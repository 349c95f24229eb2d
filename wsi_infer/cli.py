"""Command line: ``wsi-infer SLIDE`` runs a model; ``info``, ``models``, ``devices``, ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from .backends import BACKENDS, available_devices
from .errors import OutputError, WsiInferError
from .models import DEFAULT_MODEL, BareModel, builtin_models, load_card
from .overlay import OutputDtype
from .pipeline import RunOptions, run_slide, summary_dict
from .readers import READERS, open_slide
from .serve import add_serve_parser, cmd_serve

log = logging.getLogger("wsi_infer")
COMMANDS = ("run", "batch", "info", "models", "devices", "demo", "quantize", "serve")

EPILOG = """\
commands:
  wsi-infer SLIDE [options]     run a model over a slide (same as `wsi-infer run SLIDE`)
  wsi-infer batch INPUT... --out-dir DIR
                                many slides (folders, .txt lists, .csv manifests); resumes
  wsi-infer info SLIDE          vendor, size, levels, downsamples and mpp of a slide
  wsi-infer models              the built-in models
  wsi-infer devices             devices each backend can use here
  wsi-infer quantize MODEL --out DIR --calibrate SLIDE...
                                int8 ONNX copy of a model, calibrated on real tiles
  wsi-infer demo                make the built-in demo slide and run the default model on it
  wsi-infer serve --slides-root DIR
                                HTTP service predicting slide regions, with auto-batching

exit codes: 0 ok, 1 internal error, 2 bad slide (unreadable, no mpp...), 3 bad model,
4 device/backend not available, 5 output problem, 6 batch finished but some slides failed,
130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-infer", description="Run segmentation models over whole-slide images into "
        "multiscale OME-Zarr probability overlays.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wsi-infer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a model over a slide", description="Run a model over a "
                         "slide and write a multiscale OME-Zarr overlay.")
    run.add_argument("slide", type=Path, help="slide file (SVS, NDPI, MRXS, TIFF, OME-TIFF, DICOM...)")
    run.add_argument("--out", type=Path, default=None, help="output .zarr (default: "
                     "./<slide>.<model>.zarr)")
    add_run_options(run)
    add_output_mode_options(run)

    batch = sub.add_parser("batch", help="run a model over many slides, resuming earlier runs",
                           description="Run a model over many slides. Re-running the same command "
                           "skips finished slides and resumes partial ones chunk by chunk.")
    batch.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                       help="slide files, folders, .txt lists (one path per line) or .csv "
                       "manifests (columns: slide, optional mpp, optional output)")
    batch.add_argument("--out-dir", type=Path, required=True, help="folder for the outputs, the "
                       "run manifest and the log")
    batch.add_argument("--glob", default="*", help="pattern for files in folders (default: *)")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on an existing "
                       "Dask cluster, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--cluster-workers", type=positive_int, default=None, metavar="N",
                       help="start a local Dask cluster of N worker processes")
    add_run_options(batch)
    add_output_mode_options(batch)

    info = sub.add_parser("info", help="describe a slide")
    info.add_argument("slide", type=Path)
    info.add_argument("--reader", choices=["auto", *READERS], default="auto")
    info.add_argument("--json", action="store_true", help="print JSON")

    models = sub.add_parser("models", help="list built-in models")
    models.add_argument("--json", action="store_true", help="print JSON")

    devices = sub.add_parser("devices", help="list available devices per backend")
    devices.add_argument("--json", action="store_true", help="print JSON")

    quantize = sub.add_parser("quantize", help="make an int8 ONNX model for fast CPU inference")
    quantize.add_argument("model", help="built-in model name or card path")
    quantize.add_argument("--out", type=Path, required=True, help="folder for the int8 model and card")
    quantize.add_argument("--calibrate", type=Path, nargs="+", required=True, metavar="SLIDE",
                          help="slides to draw calibration and test tiles from")
    quantize.add_argument("--tiles", type=positive_int, default=32, help="calibration tiles (default: 32)")

    demo = sub.add_parser("demo", help="make the demo slide and run the default model on it")
    demo.add_argument("--dir", type=Path, default=Path("demo"), help="where to put the slide and "
                      "the overlay (default: ./demo)")
    demo.add_argument("--size", type=int, nargs=2, default=(12000, 9000), metavar=("W", "H"),
                      help="demo slide size in pixels at 0.25 µm/px (default: 12000 9000)")
    demo.add_argument("--out", type=Path, default=None, help="output .zarr (default: in --dir)")
    add_run_options(demo)
    add_output_mode_options(demo)

    add_serve_parser(sub)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a model."""
    g = parser.add_argument_group("model and hardware")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in model name or model card path "
                   f"(default: {DEFAULT_MODEL}; see `wsi-infer models`)")
    g.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="default: onnxruntime")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps, tensorrt, openvino, "
                   "coreml, dml or auto (default: cpu; see `wsi-infer devices`)")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="tiles per model call (default: 16 on GPUs; on CPUs, where larger batches "
                        "cost memory and gain no speed, 2 with onnxruntime and 1 with torch)")
    g.add_argument("--threads", type=positive_int, default=None, help="backend threads (default: all cores)")
    g.add_argument("--workers", type=positive_int, default=2, help="Dask threads reading and "
                   "stitching chunks (default: 2)")
    g.add_argument("--fp16", action="store_true", help="half precision (torch on cuda/mps)")
    b = parser.add_argument_group("bare model files (--model model.onnx / model.pt): what a card "
                                  "would say")
    b.add_argument("--model-mpp", type=float, default=None, help="µm/px the model was trained at "
                   "(required for a bare model)")
    b.add_argument("--classes", default=None, help="comma-separated output class names")
    b.add_argument("--activation", choices=["none", "sigmoid", "softmax"], default="none",
                   help="applied to the raw output (default: none = already probabilities)")
    b.add_argument("--layout", choices=["NCHW", "NHWC"], default=None,
                   help="input layout (default: read from the ONNX graph)")
    b.add_argument("--scale", type=float, default=1 / 255, help="input = (pixel * scale - mean) / "
                   "std (default scale: 1/255)")
    b.add_argument("--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("R", "G", "B"))
    b.add_argument("--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("R", "G", "B"))
    b.add_argument("--receptive-margin", type=int, default=16, help="context pixels the model "
                   "needs on each side (default: 16)")
    b.add_argument("--size-multiple", type=positive_int, default=None, help="input sides must be "
                   "multiples of this (a U-Net's total pooling stride; default: read from the ONNX "
                   "graph, 1 for TorchScript)")
    s = parser.add_argument_group("slide")
    s.add_argument("--mpp", type=float, default=None, help="slide microns per pixel at level 0; "
                   "overrides the metadata (needed when the slide has none)")
    s.add_argument("--reader", choices=["auto", *READERS], default="auto", help="default: auto")
    s.add_argument("--no-tissue-mask", dest="tissue_mask", action="store_false",
                   help="run everywhere, not only on detected tissue")
    t = parser.add_argument_group("tiling and output")
    t.add_argument("--tile-size", type=positive_int, default=None, help="output pixels per tile for "
                   "fully convolutional models (default: the card's tile_size)")
    t.add_argument("--halo", type=int, default=None, help="context pixels on each tile side "
                   "(default: the card's receptive margin)")
    t.add_argument("--chunk-size", type=positive_int, default=2048, help="approximate chunk side "
                   "in output pixels; the unit of Dask tasks and zarr chunks (default: 2048)")
    t.add_argument("--dtype", choices=["uint8", "float16", "float32"], default="uint8",
                   help="stored probabilities: uint8 0..255 (default) or float")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")


def add_output_mode_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no log, only errors")
    g.add_argument("--log-json", action="store_true", help="JSON log lines on stderr and a JSON "
                   "summary on stdout (for scripts)")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run_options(args: argparse.Namespace) -> RunOptions:
    dtype: OutputDtype = args.dtype
    bare = BareModel(
        mpp=args.model_mpp, classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes
        else None, activation=args.activation, layout=args.layout, scale=args.scale,
        mean=tuple(args.mean), std=tuple(args.std), receptive_margin=args.receptive_margin,
        tile_size=args.tile_size or 512, size_multiple=args.size_multiple,
    )
    return RunOptions(
        model=args.model, bare_model=bare, backend=args.backend, device=args.device, batch_size=args.batch_size,
        threads=args.threads, fp16=args.fp16, mpp=args.mpp, reader=args.reader,
        tissue_mask=args.tissue_mask, tile_size=args.tile_size, halo=args.halo,
        chunk_size=args.chunk_size, dtype=dtype, workers=args.workers, overwrite=args.overwrite,
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 3), "level": record.levelname,
                           "message": record.getMessage()})


def configure_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_json", False):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("wsi-infer: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if getattr(args, "quiet", False) else logging.INFO)
    log.propagate = False


def cmd_run(args: argparse.Namespace, slide: Path, out: Path | None) -> int:
    options = run_options(args)
    show_bar = not args.quiet and not args.log_json and sys.stderr.isatty()
    bar: Any = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=0, unit="tile", desc=slide.name, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        summary = run_slide(slide, out, options, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if args.log_json:
        print(json.dumps(summary_dict(summary)))
    else:
        log.info("%d tiles run, %d skipped (background), %.1f s, %.1f tiles/s -> %s",
                 summary.tiles_run, summary.tiles_skipped, summary.seconds,
                 summary.tiles_per_second, summary.output)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with open_slide(args.slide, args.reader) as slide:
        try:
            mpp_error = None
            _ = slide.mpp  # raises on malformed metadata
        except ValueError as exc:
            mpp_error = str(exc)
        info = asdict(slide.info()) if mpp_error is None else {**_info_without_mpp(slide), "mpp_error": mpp_error}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"path:        {info['path']}")
    print(f"reader:      {info['reader']}    vendor: {info['vendor']}")
    print(f"size:        {info['width']} x {info['height']} px")
    mpp = (f"{info['mpp_x']:.5g} x {info['mpp_y']:.5g} µm/px (from {info['mpp_source']})"
           if info.get("mpp_x") else f"unknown ({info.get('mpp_error', 'not in metadata')}; use --mpp)")
    print(f"mpp:         {mpp}")
    print("levels:")
    for i, ((w, h), d) in enumerate(zip(info["level_dimensions"], info["level_downsamples"], strict=True)):
        print(f"  {i}: {w} x {h}  downsample {d:.4g}")
    return 0


def _info_without_mpp(slide: Any) -> dict[str, Any]:
    return {"path": str(slide.path), "reader": slide.name, "vendor": slide.vendor,
            "width": slide.dimensions[0], "height": slide.dimensions[1],
            "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": list(slide.level_downsamples),
            "mpp_x": None, "mpp_y": None, "mpp_source": None}


def cmd_models(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name, path in builtin_models().items():
        card = load_card(path)
        size = sum(w.path.stat().st_size for w in card.weights if w.path.exists())
        rows.append({"name": name, "version": card.version, "task": "segmentation", "mpp": card.mpp,
                     "classes": [c.name for c in card.classes],
                     "formats": [w.format for w in card.weights], "bytes": size,
                     "sha256": card.sha256, "card": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<12} v{row['version']:<8} {row['mpp']:>6g} µm/px  "
              f"classes={','.join(row['classes'])}  {row['bytes'] / 1024:.0f} KiB  "
              f"{'+'.join(row['formats'])}  sha256={row['sha256'][:16]}…")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    devices = available_devices()
    if args.json:
        print(json.dumps(devices, indent=2))
    else:
        for backend, names in devices.items():
            print(f"{backend:<12} {', '.join(names) if names else '(not installed)'}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .models import resolve_model
    from .quantize import quantize_model

    report = quantize_model(resolve_model(args.model), args.out, args.calibrate,
                            calibration_tiles=args.tiles)
    print(f"int8 model card: {report.card}")
    print(f"calibrated on {report.calibration_tiles} tiles; on {report.test_tiles} held-out tiles: "
          f"max |p_int8 - p_float| = {report.max_abs_diff:.4f}, mean = {report.mean_abs_diff:.5f}, "
          "Dice of masks at 0.5: " + ", ".join(f"{k} {v:.4f}" for k, v in report.dice.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .synthetic import make_slide

    args.dir.mkdir(parents=True, exist_ok=True)
    width, height = args.size
    slide = args.dir / f"demo-{width}x{height}.svs"
    if not slide.exists():
        t0 = time.perf_counter()
        make_slide(slide, width=width, height=height, mpp=0.25, kind="svs", seed=0)
        log.info("made demo slide %s (%dx%d at 0.25 µm/px) in %.1f s", slide, width, height,
                 time.perf_counter() - t0)
    out = args.out or args.dir / f"{slide.stem}.{Path(args.model).stem}.zarr"
    args.overwrite = True
    return cmd_run(args, slide, out)


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import (
        EXIT_ALL_OK,
        EXIT_NO_INPUT,
        EXIT_SOME_FAILED,
        LOG_NAME,
        collect_items,
        prepare_out_dir,
        run_batch,
    )

    items = collect_items(args.inputs, args.glob)
    if not items:
        log.error("error: no slides found in %s", " ".join(map(str, args.inputs)))
        return EXIT_NO_INPUT
    prepare_out_dir(args.out_dir)
    try:
        file_handler = logging.FileHandler(args.out_dir / LOG_NAME)
    except OSError as exc:
        raise OutputError(f"{args.out_dir / LOG_NAME}: cannot write the batch log: {exc}") from exc
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    options = run_options(args)
    with dask_client(args, options) as (client, options):
        report = run_batch(items, args.out_dir, options, client=client)
    counts = report.counts()
    if args.log_json:
        print(json.dumps({"counts": counts, "manifest": str(args.out_dir / "run-manifest.json")}))
    log.info("batch finished: %s; manifest %s", ", ".join(f"{v} {k}" for k, v in counts.items()),
             args.out_dir / "run-manifest.json")
    return EXIT_SOME_FAILED if report.failed else EXIT_ALL_OK


class dask_client:
    """A ``distributed.Client`` for ``--scheduler`` / ``--cluster-workers``, or none."""

    def __init__(self, args: argparse.Namespace, options: RunOptions) -> None:
        self.args, self.options = args, options
        self.client: Any = None
        self.cluster: Any = None

    def __enter__(self) -> tuple[Any, RunOptions]:
        from dataclasses import replace

        if self.args.scheduler is None and self.args.cluster_workers is None:
            return None, self.options
        from distributed import Client, LocalCluster

        if self.args.scheduler is not None:
            self.client = Client(self.args.scheduler)
            return self.client, self.options
        n = self.args.cluster_workers
        threads = self.options.threads or max(1, (os.cpu_count() or 1) // n)
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        log.info("started a local Dask cluster with %d workers (%d model threads each)", n, threads)
        return self.client, replace(self.options, threads=threads)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops like Ctrl-C: the output is marked incomplete and the exit code is 130."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args)
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops a run even when the parent started us with SIGINT ignored (a background job
    # of a script): the run is then marked incomplete instead of finishing unasked.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.command == "run":
            return cmd_run(args, args.slide, args.out)
        return {"batch": cmd_batch, "info": cmd_info, "models": cmd_models, "devices": cmd_devices, "quantize": cmd_quantize,
                "demo": cmd_demo, "serve": cmd_serve}[args.command](args)
    except WsiInferError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; the output is marked incomplete")
        return 130
    except BrokenPipeError:  # `wsi-infer models --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
