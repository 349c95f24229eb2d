"""Hardware-selectable inference backends behind one interface."""

from __future__ import annotations

from typing import Literal

from ..errors import DeviceNotAvailableError
from ..models import ModelCard, verified_weights
from . import onnx_backend, torch_backend
from .base import Backend

BackendName = Literal["onnxruntime", "torch"]
BACKENDS: tuple[BackendName, ...] = ("onnxruntime", "torch")

__all__ = ["BACKENDS", "Backend", "BackendName", "available_devices", "create_backend"]


def available_devices() -> dict[str, list[str]]:
    """Devices each backend can use on this machine."""
    return {
        "onnxruntime": onnx_backend.available_devices(),
        "torch": torch_backend.available_devices(),
    }


def create_backend(
    card: ModelCard,
    backend: BackendName = "onnxruntime",
    device: str = "cpu",
    *,
    threads: int | None = None,
    fp16: bool = False,
) -> Backend:
    """Load ``card``'s weights (after verifying their checksum) on ``backend`` and ``device``."""
    if backend == "onnxruntime":
        if fp16:
            raise DeviceNotAvailableError(
                "fp16 with onnxruntime needs an fp16 ONNX model; use --backend torch for fp16"
            )
        return onnx_backend.OnnxRuntimeBackend(verified_weights(card, "onnx"), device, threads)
    if backend == "torch":
        return torch_backend.TorchBackend(
            verified_weights(card, "torchscript"), device, threads, fp16
        )
    raise DeviceNotAvailableError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
