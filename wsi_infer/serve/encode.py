"""Answers of ``/v1/infer``: ``.npy`` or raw array bytes, or a PNG overlay, with headers that
say where the pixels lie."""

from __future__ import annotations

import io
from typing import Literal

import imagecodecs
import numpy as np

from ..overlay import encode as stored_values
from ..region import RegionPrediction
from .batcher import Ticket

AnswerFormat = Literal["npy", "raw", "png"]
AnswerDtype = Literal["float32", "uint8"]

MEDIA_TYPES: dict[str, str] = {"npy": "application/x-npy", "raw": "application/octet-stream",
                               "png": "image/png"}


def encode_answer(prediction: RegionPrediction, fmt: AnswerFormat, dtype: AnswerDtype,
                  class_name: str | None = None) -> bytes:
    """The body: ``(classes, h, w)`` probabilities as ``.npy`` or raw C-order bytes (float32
    0..1, or uint8 0..255 rounded as the CLI stores them), or an RGBA PNG overlay."""
    if fmt == "png":
        return bytes(imagecodecs.png_encode(overlay_rgba(prediction, class_name)))
    values = stored_values(prediction.probabilities, dtype)
    if fmt == "raw":
        return np.ascontiguousarray(values).tobytes()
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def overlay_rgba(prediction: RegionPrediction, class_name: str | None = None) -> np.ndarray:
    """``(h, w, 4)`` uint8: each class's colour weighted by its probability, alpha the largest
    probability; with ``class_name``, that class alone (alpha = its probability)."""
    probs = prediction.probabilities
    names = [c.name for c in prediction.classes]
    if class_name is not None:
        if class_name not in names:
            raise ValueError(f"unknown class {class_name!r}; the model's classes are "
                             f"{', '.join(names)}")
        index = names.index(class_name)
        probs = probs[index : index + 1]
        colors = np.array([_rgb(prediction.classes[index].color)], np.float32)
    else:
        colors = np.array([_rgb(c.color) for c in prediction.classes], np.float32)
    p = np.clip(probs, 0.0, 1.0)
    total = p.sum(axis=0)
    rgb = np.einsum("chw,ck->hwk", p, colors) / np.maximum(total, 1e-6)[..., None]
    alpha = p.max(axis=0) * 255.0
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)
    return np.rint(np.clip(rgba, 0, 255)).astype(np.uint8)


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if len(value) != 6:
        return (255, 0, 255)
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def answer_headers(prediction: RegionPrediction, fmt: AnswerFormat, dtype: AnswerDtype,
                   ticket: Ticket) -> dict[str, str]:
    """Shape, dtype and placement of the answer, and what its tiles went through."""
    c, h, w = prediction.probabilities.shape
    return {
        "X-Array-Shape": f"{c},{h},{w}" if fmt != "png" else f"{h},{w},4",
        "X-Array-Dtype": dtype if fmt != "png" else "uint8",
        "X-Classes": ",".join(k.name for k in prediction.classes),
        "X-Origin-X": str(prediction.x0),
        "X-Origin-Y": str(prediction.y0),
        "X-Mpp-X": repr(prediction.mpp_x),
        "X-Mpp-Y": repr(prediction.mpp_y),
        "X-Slide-Mpp-X": repr(prediction.slide_mpp.x),
        "X-Slide-Mpp-Y": repr(prediction.slide_mpp.y),
        "X-Tiles": str(prediction.tiles_run),
        "X-Batch-Sizes": ",".join(map(str, ticket.batch_sizes)),
        "X-Queue-Wait-Ms": f"{ticket.max_wait_s * 1000:.3f}",
        "X-Compute-Ms": f"{ticket.compute_s * 1000:.3f}",
        "X-Seconds": f"{prediction.seconds:.4f}",
    }
