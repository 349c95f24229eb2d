"""int8 quantization of ONNX models with onnxruntime's tools, calibrated on real slide tiles.

``wsi-infer quantize MODEL --out DIR --calibrate SLIDE...`` writes ``DIR/<name>-int8.onnx`` and
its card, and reports how well the int8 model agrees with the float one on held-out tiles.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import create_backend
from .errors import ModelError
from .models import ModelCard, sha256_of, verified_weights
from .predictor import Predictor
from .readers import open_slide
from .rect import Rect
from .resolution import plan_level, read_target
from .tissue import detect_tissue

#: Side of calibration tiles for fully convolutional models.
CALIBRATION_TILE = 256


@dataclass(frozen=True)
class QuantizationReport:
    """Agreement of the int8 model with the float model on held-out tiles."""

    card: Path
    calibration_tiles: int
    test_tiles: int
    max_abs_diff: float
    mean_abs_diff: float
    dice: dict[str, float]  # per class, masks thresholded at 0.5


def sample_tiles(card: ModelCard, slides: Sequence[Path], count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` RGB tiles ``(N, h, w, 3)`` from tissue at the model's mpp, spread over slides."""
    size = card.input.size or (CALIBRATION_TILE, CALIBRATION_TILE)
    rng = np.random.default_rng(seed)
    tiles: list[np.ndarray] = []
    per_slide = max(1, -(-count // len(slides)))
    for path in slides:
        with open_slide(path) as slide:
            mpp = slide.mpp
            if mpp is None:
                raise ModelError(f"{path}: calibration slides need mpp metadata")
            plan = plan_level(slide, mpp, card.mpp)
            tissue = detect_tissue(slide, mpp)
            ys, xs = np.nonzero(tissue.mask)
            if ys.size == 0:
                continue
            for i in rng.choice(ys.size, size=min(per_slide, ys.size), replace=False):
                cy = int(ys[i] * tissue.mpp_y / plan.mpp_y)
                cx = int(xs[i] * tissue.mpp_x / plan.mpp_x)
                y0 = int(np.clip(cy - size[0] // 2, 0, max(plan.height - size[0], 0)))
                x0 = int(np.clip(cx - size[1] // 2, 0, max(plan.width - size[1], 0)))
                tile = np.full((*size, 3), 255.0, np.float32)
                region = read_target(slide, plan, Rect(x0, y0, min(x0 + size[1], plan.width),
                                                       min(y0 + size[0], plan.height)))
                tile[: region.shape[0], : region.shape[1]] = region
                tiles.append(tile)
    if not tiles:
        raise ModelError("no tissue found on the calibration slides")
    return np.stack(tiles[:count])


class _Reader:
    """onnxruntime's CalibrationDataReader over preprocessed tiles."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_model(card: ModelCard, out_dir: Path, slides: Sequence[Path], *,
                   calibration_tiles: int = 32, test_tiles: int = 16) -> QuantizationReport:
    """Write an int8 (QDQ, per-channel) copy of ``card``'s ONNX model and its card."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = verified_weights(card, "onnx")
    float_predictor = Predictor(card, create_backend(card, "onnxruntime", "cpu"))
    tiles = sample_tiles(card, slides, calibration_tiles + test_tiles)
    if len(tiles) <= test_tiles:
        raise ModelError(f"only {len(tiles)} tissue tiles found; need more than {test_tiles}")
    calibration, held_out = tiles[:-test_tiles], tiles[-test_tiles:]
    input_name = _input_name(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{card.name}-int8"
    target = out_dir / f"{name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the original if it fails
            shutil.copy(source, prepared)
        batches = [float_predictor.preprocess(t[None]) for t in calibration]
        quantize_static(str(prepared), str(target), _Reader(input_name, batches),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    card_path = _write_card(card, target, out_dir / f"{name}.json", name, len(calibration))
    from .models import load_card

    int8 = load_card(card_path)
    int8_predictor = Predictor(int8, create_backend(int8, "onnxruntime", "cpu"))
    a = np.concatenate([float_predictor.predict(t[None]) for t in held_out])
    b = np.concatenate([int8_predictor.predict(t[None]) for t in held_out])
    dice = {}
    for index, cls in enumerate(card.classes):
        ma, mb = a[:, index] > 0.5, b[:, index] > 0.5
        total = ma.sum() + mb.sum()
        dice[cls.name] = float(2 * (ma & mb).sum() / total) if total else 1.0
    return QuantizationReport(card_path, len(calibration), len(held_out),
                              float(np.abs(a - b).max()), float(np.abs(a - b).mean()), dice)


def _input_name(path: Path) -> str:
    import onnxruntime as ort

    return str(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name)


def _write_card(card: ModelCard, weights: Path, path: Path, name: str, calibration: int) -> Path:
    data = json.loads(card.path.read_text()) if card.path.exists() else None
    if data is None:
        raise ModelError(f"{card.path}: quantizing needs the model's card file")
    data.update(
        name=name,
        description=f"{card.description} int8 (QDQ, per-channel) quantization of {card.name} "
                    f"{card.version}, calibrated on {calibration} tissue tiles.".strip(),
        weights=[{"format": "onnx", "file": weights.name, "sha256": sha256_of(weights)}],
    )
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
