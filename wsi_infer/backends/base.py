"""The interface every inference backend implements."""

from __future__ import annotations

import abc

import numpy as np


class Backend(abc.ABC):
    """Runs one model on one device.  ``run`` takes and returns arrays in the model's own layout."""

    name: str = "base"

    def __init__(self, device: str) -> None:
        self.device = device

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed float32 batch and return its raw output."""

    @property
    def accelerated(self) -> bool:
        """Whether the model runs on an accelerator (GPU, NPU) rather than the CPU."""
        return False

    def describe(self) -> str:
        """Backend and device, e.g. ``onnxruntime:CPUExecutionProvider``."""
        return f"{self.name}:{self.device}"
