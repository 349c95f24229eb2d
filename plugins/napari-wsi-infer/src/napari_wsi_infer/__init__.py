"""napari-wsi-infer: run wsi-infer models in napari, review and export their overlays.

The widget's buttons call these plain functions, which work without a GUI too.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._export import geojson_features, mask_polygons, write_geojson, write_thumbnail
from ._fov import visible_region
from ._layers import overlay_layer_data, region_layer_data, slide_layer_data
from ._overlay import IncompleteOverlayError, OverlayError, OverlayInfo, open_overlay
from ._probmap import ProbabilityMap, class_areas_mm2, from_overlay, from_region
from ._run import default_output, predict_fov, start_slide_run

__all__ = [
    "IncompleteOverlayError",
    "OverlayError",
    "OverlayInfo",
    "ProbabilityMap",
    "__version__",
    "class_areas_mm2",
    "default_output",
    "from_overlay",
    "from_region",
    "geojson_features",
    "mask_polygons",
    "open_overlay",
    "overlay_layer_data",
    "predict_fov",
    "region_layer_data",
    "slide_layer_data",
    "start_slide_run",
    "visible_region",
    "write_geojson",
    "write_thumbnail",
]
