"""Turn RGB tiles into class probabilities with a model card and a backend."""

from __future__ import annotations

import threading

import numpy as np

from .backends import Backend
from .errors import ModelError
from .models import ModelCard


class Predictor:
    """Preprocess tiles as the card says, run the backend, apply the activation, check the result.

    Calls are serialised with a lock: one model instance per device uses all of the device, so
    running two batches at once would only oversubscribe it.
    """

    def __init__(self, card: ModelCard, backend: Backend) -> None:
        self.card = card
        self.backend = backend
        spec = card.input
        order = [0, 1, 2] if spec.channel_order == "RGB" else [2, 1, 0]
        self._order = np.array(order)
        self._scale = np.float32(spec.scale)
        self._mean = np.asarray(spec.mean, np.float32)
        self._std = np.asarray(spec.std, np.float32)
        self._lock = threading.Lock()

    def batch_size(self, requested: int | None = None) -> int:
        """``requested``, or the backend's default for the device the model runs on."""
        return requested if requested is not None else self.backend.default_batch_size

    @property
    def num_classes(self) -> int:
        return len(self.card.classes)

    def preprocess(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` RGB 0..255 → the model's input layout, normalised, float32."""
        x = tiles[..., self._order] if self.card.input.channel_order == "BGR" else tiles
        x = (x * self._scale - self._mean) / self._std
        if self.card.input.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` RGB tiles → ``(N, classes, H, W)`` float32 probabilities."""
        x = self.preprocess(tiles)
        with self._lock:
            raw = self.backend.run(x)
        return self._postprocess(raw, tiles.shape)

    def _postprocess(self, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        n, h, w, _ = shape
        c = self.num_classes
        expected = (n, c, h, w) if self.card.input.layout == "NCHW" else (n, h, w, c)
        if raw.shape != expected:
            raise ModelError(
                f"{self.card.path}: model output shape {raw.shape} does not match the card: "
                f"expected {expected} ({c} classes, output stride 1, layout {self.card.input.layout})"
            )
        y = raw if self.card.input.layout == "NCHW" else raw.transpose(0, 3, 1, 2)
        y = y.astype(np.float32, copy=False)
        if not np.isfinite(y).all():
            raise ModelError(f"{self.card.path}: model produced NaN or Inf values")
        if self.card.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif self.card.activation == "softmax":
            y = np.exp(y - y.max(axis=1, keepdims=True))
            y /= y.sum(axis=1, keepdims=True)
        low, high = self.card.output_range
        if y.size and (y.min() < low - 1e-4 or y.max() > high + 1e-4):
            raise ModelError(
                f"{self.card.path}: model output range [{y.min():.4g}, {y.max():.4g}] is outside "
                f"the declared range [{low}, {high}]"
            )
        return np.ascontiguousarray(y)
