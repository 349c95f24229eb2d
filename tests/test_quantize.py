from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from modelzoo import conv_onnx, write_card

from wsi_infer.models import load_card
from wsi_infer.pipeline import RunOptions, run_slide
from wsi_infer.synthetic import make_slide

EXE = str(Path(sys.executable).parent / "wsi-infer")


def test_quantize_writes_a_valid_int8_card_that_agrees_with_float(tmp_path: Path) -> None:
    slide = make_slide(tmp_path / "cal.svs", width=3000, height=2400, mpp=0.5, seed=3)
    conv_onnx(tmp_path / "conv.onnx", kernel=5, classes=2, seed=1)
    card = write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=2,
                      classes=["a", "b"], activation="softmax", mean=0.5, std=0.25)
    result = subprocess.run([EXE, "quantize", str(card), "--out", str(tmp_path / "q"),
                             "--calibrate", str(slide), "--tiles", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    int8 = load_card(tmp_path / "q" / "conv-int8.json")
    assert int8.name == "conv-int8" and int8.weights[0].format == "onnx"
    line = result.stdout.splitlines()[-1]
    dice = float(line.split("a ")[-1].split(",")[0])
    assert dice > 0.9
    max_diff = float(line.split("max |p_int8 - p_float| = ")[1].split(",")[0])
    assert max_diff < 0.25
    summary = run_slide(slide, tmp_path / "o.zarr", RunOptions(model=str(tmp_path / "q" / "conv-int8.json")))
    assert summary.status == "complete" and summary.tiles_run > 0


def test_quantize_needs_tissue(tmp_path: Path) -> None:
    import numpy as np
    from slides import write_pyramid

    from wsi_infer.errors import ModelError
    from wsi_infer.quantize import quantize_model

    glass = write_pyramid(tmp_path / "glass.tif", np.full((600, 600, 3), 240, np.uint8), mpp=0.5)
    conv_onnx(tmp_path / "conv.onnx")
    card = load_card(write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=3,
                                classes=["a", "b"], activation="softmax"))
    with pytest.raises(ModelError, match="no tissue"):
        quantize_model(card, tmp_path / "q", [glass])
