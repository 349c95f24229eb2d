"""napari layer data ``(data, kwargs, layer_type)`` for slides, overlays, regions and masks.

Every layer made here carries ``metadata["wsi_infer"]`` (a :class:`LayerMeta` as a dict) so
the widget can tell slides from probability layers and find where their data came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from napari.layers import Layer
from napari.utils.colormaps import Colormap, DirectLabelColormap
from wsi_infer.readers import open_slide
from wsi_infer.region import RegionPrediction

from ._overlay import OverlayInfo, overlay_pyramid
from ._probmap import region_translate
from ._pyramid import slide_pyramid

LayerData = tuple[Any, dict[str, Any], str]
LayerKind = Literal["slide", "overlay", "region", "mask"]
META = "wsi_infer"
OVERLAY_OPACITY = 0.5


def kind_of(metadata: dict[str, Any]) -> LayerKind | None:
    """The wsi-infer kind of a layer from its metadata (``None`` for other layers)."""
    info = metadata.get(META)
    return info.get("kind") if isinstance(info, dict) else None


def layers_of(layers: Iterable[Layer], *kinds: LayerKind) -> list[Layer]:
    """The layers of the given wsi-infer kinds, in order."""
    return [layer for layer in layers if kind_of(layer.metadata) in kinds]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` → ``(r, g, b)`` in 0..255."""
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def class_colormap(color: str) -> Colormap:
    """Transparent at 0, the class colour at the top of the contrast range."""
    r, g, b = (v / 255 for v in hex_to_rgb(color))
    return Colormap(colors=[[r, g, b, 0.0], [r, g, b, 1.0]], name=f"wsi-infer {color.upper()}")


def slide_layer_data(path: str | os.PathLike[str]) -> LayerData:
    """A lazy multiscale RGB layer of a slide, in µm (level-0 mpp), pixel centres at
    ``index × mpp`` (translation 0), as ``docs/output.md`` expects overlays to be drawn on."""
    path = Path(path).resolve()
    slide = open_slide(path)
    try:
        mpp = slide.mpp
    except ValueError:
        mpp = None
    levels = slide_pyramid(slide, name=f"wsi-slide-{path}")
    scale = (mpp.y, mpp.x) if mpp is not None else (1.0, 1.0)
    width, height = slide.dimensions
    kwargs: dict[str, Any] = {
        "name": path.name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": scale,
        "translate": (0.0, 0.0),
        "contrast_limits": (0, 255),
        "metadata": {META: {
            "kind": "slide", "path": str(path), "vendor": slide.vendor,
            "mpp": scale if mpp is not None else None, "size": (height, width),
        }},
    }
    if mpp is not None:
        kwargs["units"] = ("micrometer", "micrometer")
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"


def overlay_layer_data(info: OverlayInfo, generation: int = 0) -> list[LayerData]:
    """One lazy multiscale image layer per class of an overlay."""
    levels = overlay_pyramid(info, generation)
    layers = []
    for index, (name, color) in enumerate(zip(info.classes, info.colors, strict=True)):
        data = [level[index] for level in levels]
        layers.append(_probability_layer(
            data if len(data) > 1 else data[0], name=f"{info.model}: {name}", color=color,
            scale=info.scale, translate=info.translate, high=info.value_max,
            meta={"kind": "overlay", "path": str(info.path), "class": name,
                  "class_index": index, "source": f"overlay:{info.path}",
                  "slide_path": info.slide_path, "shape": info.shape},
        ))
    return layers


def region_layer_data(prediction: RegionPrediction, slide_path: str, model: str) -> list[LayerData]:
    """One image layer per class of a field-of-view prediction, placed on the slide."""
    h, w = prediction.probabilities.shape[1:]
    source = f"region:{slide_path}:{model}:{prediction.x0},{prediction.y0},{w}x{h}"
    return [
        _probability_layer(
            prediction.probabilities[index], name=f"{model}: {c.name} (FOV)", color=c.color,
            scale=(prediction.mpp_y, prediction.mpp_x), translate=region_translate(prediction),
            high=1.0,
            meta={"kind": "region", "prediction": prediction, "class": c.name,
                  "class_index": index, "source": source, "slide_path": slide_path},
        )
        for index, c in enumerate(prediction.classes)
    ]


def mask_layer_data(mask: np.ndarray, color: str, name: str, scale: tuple[float, float],
                    translate: tuple[float, float], source: str) -> LayerData:
    """A Labels layer (1 = above threshold) in the class colour."""
    rgba = np.array([*(v / 255 for v in hex_to_rgb(color)), 1.0])
    colormap = DirectLabelColormap(color_dict={None: np.zeros(4), 0: np.zeros(4), 1: rgba})
    return mask.astype(np.uint8), {
        "name": name, "scale": scale, "translate": translate, "opacity": 0.9,
        "units": ("micrometer", "micrometer"),
        "colormap": colormap, "metadata": {META: {"kind": "mask", "source": source}},
    }, "labels"


def _probability_layer(data: Any, *, name: str, color: str, scale: tuple[float, float],
                       translate: tuple[float, float], high: float,
                       meta: dict[str, Any]) -> LayerData:
    return data, {
        "name": name,
        "scale": scale,
        "translate": translate,
        "colormap": class_colormap(color),
        "contrast_limits": (0.0, high),
        "opacity": OVERLAY_OPACITY,
        "blending": "translucent",
        "multiscale": isinstance(data, list),
        "units": ("micrometer", "micrometer"),
        "metadata": {META: meta},
    }, "image"
