"""Find tissue on a low-resolution view of the slide, so background is never computed.

Brightfield (H&E, IHC): a pixel is tissue when its saturation is above an Otsu threshold (with
a floor, so bare glass never splits into "tissue") and it absorbs light (optical density).
Black scanner padding (MIRAX, NDPI) and transparent regions (which read as white) are never
tissue.  Fluorescence slides (dark background) are detected and thresholded on brightness.
The mask is then cleaned with morphology and dilated by a small safety margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from .readers import Mpp, SlideReader
from .rect import Rect
from .resolution import plan_level, read_target_whole

#: Bumped whenever a change to the detector changes any mask (it is part of the run key).
TISSUE_VERSION = 2

#: Resolution (µm/px) of the thumbnail the mask is computed on.
TISSUE_MPP = 8.0
#: Saturation below this is glass, whatever the histogram says.
MIN_SATURATION = 0.04
#: Tissue is at least this much more saturated than the glass around it.
GLASS_SATURATION_MARGIN = 0.03
#: Summed RGB optical density below this is glass.
MIN_OPTICAL_DENSITY = 0.12
#: Pixels darker than this in every channel are scanner padding, not tissue.
PADDING_MAX = 30
#: Tissue pieces smaller than this (µm²) are dust.
MIN_OBJECT_UM2 = 80.0 * 80.0
#: Safety margin added around tissue (µm).
MARGIN_UM = 32.0

Modality = Literal["brightfield", "fluorescence"]


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask covering the whole slide at ``mpp_x`` × ``mpp_y``."""

    mask: np.ndarray
    mpp_x: float
    mpp_y: float
    modality: Modality

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, rect: Rect, mpp_x: float, mpp_y: float) -> bool:
        """Whether there is tissue in ``rect``, pixels of an image at ``mpp_x × mpp_y`` µm/px
        aligned with the slide."""
        h, w = self.mask.shape
        my0 = max(0, math.floor(rect.y0 * mpp_y / self.mpp_y))
        my1 = min(h, math.ceil(rect.y1 * mpp_y / self.mpp_y))
        mx0 = max(0, math.floor(rect.x0 * mpp_x / self.mpp_x))
        mx1 = min(w, math.ceil(rect.x1 * mpp_x / self.mpp_x))
        return bool(self.mask[my0:my1, mx0:mx1].any())


def detect_tissue(slide: SlideReader, mpp: Mpp, *, thumbnail_mpp: float = TISSUE_MPP) -> TissueMask:
    """Compute the tissue mask of ``slide`` on a thumbnail at about ``thumbnail_mpp``."""
    thumbnail_mpp = max(thumbnail_mpp, mpp.x, mpp.y)
    plan = plan_level(slide, mpp, thumbnail_mpp)
    rgb = read_target_whole(slide, plan)
    mask, modality = tissue_from_rgb(rgb, mpp=(plan.mpp_x + plan.mpp_y) / 2)
    return TissueMask(mask, plan.mpp_x, plan.mpp_y, modality)


def tissue_from_rgb(
    rgb: np.ndarray, *, mpp: float, margin_um: float = MARGIN_UM
) -> tuple[np.ndarray, Modality]:
    """Tissue mask of an RGB image (``uint8`` or float in 0..255) at ``mpp`` µm/px.

    ``margin_um`` dilates the mask by a safety margin (0 for a tight mask, e.g. for labels).
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    padding = _channel_max(rgb) < PADDING_MAX
    modality: Modality = "fluorescence" if _is_fluorescence(rgb) else "brightfield"
    if modality == "fluorescence":
        raw = _fluorescence_foreground(rgb)
    else:
        raw = _brightfield_foreground(rgb) & ~padding
    return _clean(raw, mpp=mpp, margin_um=margin_um), modality


def _channel_max(rgb: np.ndarray) -> np.ndarray:
    """``rgb.max(axis=2)`` without a reduction over a 3-long axis (several times faster)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])  # type: ignore[no-any-return]


def _channel_min(rgb: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])  # type: ignore[no-any-return]


def _is_fluorescence(rgb: np.ndarray) -> bool:
    luminance = (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) / np.float32(3)  # rgb.mean(axis=2)
    return bool(np.median(luminance) < 60)


def _brightfield_foreground(rgb: np.ndarray) -> np.ndarray:
    smooth = ndi.uniform_filter(rgb, size=(3, 3, 1))
    high, low = _channel_max(smooth), _channel_min(smooth)
    saturation = (high - low) / np.maximum(high, 1.0)
    densities = [np.log((smooth[..., c] + 1.0) / 256.0) for c in range(3)]
    optical_density = -(densities[0] + densities[1] + densities[2])
    threshold = _saturation_threshold(saturation[high >= PADDING_MAX])
    return (saturation > threshold) & (optical_density > MIN_OPTICAL_DENSITY)


def _saturation_threshold(saturation: np.ndarray) -> float:
    """Otsu splits glass from stained tissue; faint tissue (fat, mucin) lies between them, so
    the threshold is lowered to just above the glass: its median plus a few MADs."""
    if saturation.size < 2 or saturation.max() <= saturation.min():
        return MIN_SATURATION
    otsu = float(threshold_otsu(saturation))
    glass = saturation[saturation <= otsu]
    median = float(np.median(glass))
    mad = float(np.median(np.abs(glass - median)))
    return max(MIN_SATURATION, min(otsu, median + max(GLASS_SATURATION_MARGIN, 6 * mad)))


def _fluorescence_foreground(rgb: np.ndarray) -> np.ndarray:
    brightness = ndi.uniform_filter(_channel_max(rgb), size=3)
    if brightness.max() <= brightness.min():
        return np.zeros(brightness.shape, bool)
    return brightness > max(float(threshold_otsu(brightness)), 10.0)


def _clean(raw: np.ndarray, *, mpp: float, margin_um: float) -> np.ndarray:
    closed = ndi.binary_closing(raw, structure=np.ones((3, 3)), iterations=2, border_value=0)
    filled = ndi.binary_fill_holes(closed)
    labels, count = ndi.label(filled)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes * mpp * mpp >= MIN_OBJECT_UM2
        keep[0] = False
        filled = keep[labels]
    margin = round(margin_um / mpp)
    if margin <= 0 or not filled.any():
        return filled
    return ndi.binary_dilation(filled, iterations=margin)
