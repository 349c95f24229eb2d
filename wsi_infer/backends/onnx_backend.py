"""onnxruntime backend with its execution providers (CPU, CUDA, TensorRT, OpenVINO...)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DeviceNotAvailableError, ModelError
from .base import Backend

#: Device names and the execution providers they map to, best first.
_PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: Providers that run on the CPU (OpenVINO's default device is the CPU).
_CPU_PROVIDERS = ("CPUExecutionProvider", "OpenVINOExecutionProvider")
_AUTO_ORDER = ("tensorrt", "cuda", "rocm", "coreml", "dml", "openvino", "cpu")


def available_devices() -> list[str]:
    """Devices onnxruntime can use here."""
    import onnxruntime as ort

    installed = set(ort.get_available_providers())
    return [name for name in _AUTO_ORDER if _PROVIDERS[name] in installed]


def _providers_for(device: str) -> list[str | tuple[str, dict[str, str]]]:
    kind, _, index = device.partition(":")
    available = available_devices()
    if kind == "auto":
        kind = available[0]
    if kind not in _PROVIDERS or kind not in available:
        raise DeviceNotAvailableError(
            f"device {device!r} is not available to onnxruntime here; available: "
            f"{', '.join(available)} (install onnxruntime-gpu / onnxruntime-openvino for more)"
        )
    provider = _PROVIDERS[kind]
    options = {"device_id": index} if index else {}
    chain: list[str | tuple[str, dict[str, str]]] = [(provider, options)]
    if kind == "tensorrt":
        chain.append(("CUDAExecutionProvider", options))
    if kind != "cpu":
        chain.append("CPUExecutionProvider")
    return chain


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` over a verified ONNX file."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        providers = _providers_for(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise ModelError(f"{model_path}: onnxruntime cannot load the model: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{model_path}: expected one input, the model has {len(inputs)}")
        self._input = inputs[0].name
        self._output = self._session.get_outputs()[0].name
        super().__init__(device=self._session.get_providers()[0])

    @property
    def accelerated(self) -> bool:
        return self.device not in _CPU_PROVIDERS

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run([self._output], {self._input: batch})[0])
