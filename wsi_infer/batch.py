"""Many slides in one run: a folder, a list file or a CSV manifest; resume; isolated failures.

Each slide gets ``<out_dir>/<name>.zarr``.  ``<out_dir>/run-manifest.json`` is rewritten
atomically after every slide with each slide's status (``done``, ``skipped`` — already complete
from an earlier run —, ``failed`` with its error, or ``pending``), time, tile counts and output
path.  A slide that fails is recorded and the batch goes on.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InputListError, OutputError, WsiInferError
from .overlay import STATUS_SKIPPED
from .pipeline import RunOptions, run_slide
from .provenance import now
from .resources import Resources

log = logging.getLogger("wsi_infer")

MANIFEST_NAME = "run-manifest.json"
LOG_NAME = "wsi-infer.log"
#: Batch exit codes (see docs/batch.md).
EXIT_ALL_OK, EXIT_SOME_FAILED, EXIT_NO_INPUT = 0, 6, 2


@dataclass(frozen=True)
class BatchItem:
    """One slide to run, with optional per-slide mpp and output name."""

    slide: Path
    mpp: float | None = None
    output_name: str | None = None

    @property
    def name(self) -> str:
        return self.output_name or self.slide.stem


@dataclass
class SlideRecord:
    """What happened to one slide."""

    slide: str
    output: str
    status: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    seconds: float | None = None
    tiles_run: int | None = None
    tiles_skipped: int | None = None


@dataclass
class BatchReport:
    """The run manifest."""

    started: str
    options: dict[str, Any]
    slides: list[SlideRecord] = field(default_factory=list)
    finished: str | None = None

    @property
    def failed(self) -> list[SlideRecord]:
        return [s for s in self.slides if s.status == "failed"]

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for record in self.slides:
            result[record.status] = result.get(record.status, 0) + 1
        return result


def collect_items(inputs: Iterable[Path], pattern: str = "*") -> list[BatchItem]:
    """Slides from folders (files matching ``pattern``), ``.txt`` lists and ``.csv`` manifests.

    A CSV manifest has a ``slide`` column and optional ``mpp`` and ``output`` columns; relative
    paths in lists and manifests are relative to the file that names them.
    """
    items: list[BatchItem] = []
    for source in inputs:
        if source.is_dir() and source.suffix != ".zarr":
            items += [BatchItem(p) for p in sorted(source.glob(pattern)) if _looks_like_input(p)]
        elif source.suffix.lower() == ".csv":
            items += read_csv_manifest(source)
        elif source.suffix.lower() == ".txt":
            items += read_list_file(source)
        else:
            items.append(BatchItem(source))
    names = [item.name for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputListError(f"several slides would write the same output: {', '.join(duplicates)}; "
                            "give them distinct names in a CSV manifest's output column")
    return items


def _looks_like_input(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix != ".zarr" and path.name not in (
        MANIFEST_NAME, LOG_NAME) and (path.is_file() or path.is_dir())


def read_list_file(path: Path) -> list[BatchItem]:
    """One slide path per line; blank lines and ``#`` comments are ignored."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(BatchItem(_relative_to(path, line)))
    return items


def read_csv_manifest(path: Path) -> list[BatchItem]:
    """Rows of ``slide[,mpp][,output]``; a bad row is an error naming the line."""
    items = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "slide" not in reader.fieldnames:
            raise InputListError(f"{path}: a CSV manifest needs a 'slide' column "
                                f"(found: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            slide = (row.get("slide") or "").strip()
            if not slide:
                raise InputListError(f"{path}:{line}: empty slide path")
            mpp_text = (row.get("mpp") or "").strip()
            try:
                mpp = float(mpp_text) if mpp_text else None
            except ValueError:
                raise InputListError(f"{path}:{line}: mpp {mpp_text!r} is not a number") from None
            if mpp is not None and not (0 < mpp < 1000):
                raise InputListError(f"{path}:{line}: mpp {mpp_text!r} must be positive")
            output = (row.get("output") or "").strip() or None
            if output is not None and (os.sep in output or output.startswith(".")):
                raise InputListError(f"{path}:{line}: output {output!r} must be a plain name")
            items.append(BatchItem(_relative_to(path, slide), mpp, output))
    return items


def _relative_to(listing: Path, entry: str) -> Path:
    candidate = Path(entry)
    return candidate if candidate.is_absolute() else listing.parent / candidate


def run_batch(items: list[BatchItem], out_dir: Path, options: RunOptions, *,
              client: Any = None) -> BatchReport:
    """Run every slide; failures are recorded and do not stop the batch.

    Outputs that are already complete with the same model and parameters are skipped; partial
    ones are resumed chunk by chunk (unless ``options.overwrite``).
    """
    prepare_out_dir(out_dir)
    report = BatchReport(started=now(), options=asdict(options))
    report.slides = [SlideRecord(str(item.slide), str(out_dir / f"{item.name}.zarr")) for item in items]
    write_manifest(out_dir, report)
    with Resources() as resources:  # the model loads once for the whole batch
        for item, record in zip(items, report.slides, strict=True):
            _run_item(item, record, options, client, resources)
            write_manifest(out_dir, report)
    report.finished = now()
    write_manifest(out_dir, report)
    return report


def _run_item(item: BatchItem, record: SlideRecord, options: RunOptions, client: Any,
              resources: Resources) -> None:
    """Run one slide of a batch and record what happened; only an interrupt escapes."""
    t0 = time.perf_counter()
    slide_options = replace(options, mpp=item.mpp if item.mpp is not None else options.mpp)
    try:
        summary = run_slide(item.slide, record.output, slide_options,
                            resume=not options.overwrite, client=client, resources=resources)
    except WsiInferError as exc:
        record.status, record.error, record.exit_code = "failed", str(exc), exc.exit_code
        log.error("%s: failed: %s", item.slide, exc)
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected library error: record it, go on
        record.status, record.error, record.exit_code = "failed", f"{type(exc).__name__}: {exc}", 1
        log.error("%s: failed with an internal error:\n%s", item.slide, traceback.format_exc())
    else:
        record.status = "skipped" if summary.status == STATUS_SKIPPED else "done"
        record.tiles_run, record.tiles_skipped = summary.tiles_run, summary.tiles_skipped
        log.info("%s: %s (%d tiles run, %d skipped) -> %s", item.slide, record.status,
                 summary.tiles_run, summary.tiles_skipped, record.output)
    record.seconds = round(time.perf_counter() - t0, 3)


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder; an :class:`OutputError` naming it if it cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder: {exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: the output folder is not writable")


def write_manifest(out_dir: Path, report: BatchReport) -> Path:
    """Write the run manifest atomically (temporary file, then rename)."""
    path = out_dir / MANIFEST_NAME
    data = {"started": report.started, "finished": report.finished, "counts": report.counts(),
            "options": report.options, "slides": [asdict(s) for s in report.slides]}
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the run manifest: {exc}") from exc
    return path
