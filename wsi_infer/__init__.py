"""wsi-infer: segmentation models over whole-slide images into OME-Zarr overlays."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import WsiInferError
from .pipeline import RunOptions, RunSummary, run_slide
from .readers import open_slide

__all__ = ["RunOptions", "RunSummary", "WsiInferError", "__version__", "open_slide", "run_slide"]
