"""The interface every inference backend implements."""

from __future__ import annotations

import abc

import numpy as np

#: Default tiles per model call on CPUs and on accelerators (see Backend.default_batch_size).
CPU_BATCH_SIZE = 2
ACCELERATOR_BATCH_SIZE = 16


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

    @property
    def default_batch_size(self) -> int:
        """Tiles per model call when none is asked for.  On CPUs throughput is flat in the batch
        size while memory grows with it (a ResNet-18 U-Net with onnxruntime: 2.1 tiles/s at
        batch 1-4, 1.9 at 8; 1.0 GB at batch 2, 4.5 GB at 8; docs/performance.md), so a small
        batch; accelerators want large ones."""
        return ACCELERATOR_BATCH_SIZE if self.accelerated else CPU_BATCH_SIZE

    def describe(self) -> str:
        """Backend and device, e.g. ``onnxruntime:CPUExecutionProvider``."""
        return f"{self.name}:{self.device}"
