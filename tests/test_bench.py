"""The benchmarks run (on tiny slides) and measure what they say: the same tiles in every phase.
Timings are printed by the benchmarks, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_pipeline_benchmark_phases_cover_the_same_tiles(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_pipeline.py"), "--size", "3000", "2400", "--models", "nuclei",
         "--backends", "onnxruntime", "--scratch", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    (row,) = _json_lines(result.stdout)
    tiles = {phase: row[phase]["tiles"] for phase in ("read", "compute", "e2e")}
    assert tiles["read"] == tiles["compute"] == tiles["e2e"] > 0, tiles
    assert row["bound_s"] >= max(row["read"]["seconds"], row["compute"]["seconds"])
    assert row["ratio"] == row["e2e"]["seconds"] / row["bound_s"]
    assert "e2e/T" in result.stdout


def test_memory_benchmark_reports_peak_rss_per_slide(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "bench_memory.py"), "--sizes", "1500", "3000", "--model", "tissue",
         "--scratch", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    (summary,) = _json_lines(result.stdout)
    small, large = summary["rows"]
    assert small["peak_rss_mb"] > 50 and large["peak_rss_mb"] > 50
    assert summary["ratio"] == large["peak_rss_mb"] / small["peak_rss_mb"]
