"""wsi-infer: segmentation models over whole-slide images into OME-Zarr overlays."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import WsiInferError  # noqa: E402
from .pipeline import RunOptions, RunSummary, run_slide  # noqa: E402
from .readers import open_slide  # noqa: E402

__all__ = ["RunOptions", "RunSummary", "WsiInferError", "__version__", "open_slide", "run_slide"]
