from __future__ import annotations

import numpy as np
import pytest
from slides import shared_slide, tissue_image

from wsi_infer.readers import open_slide
from wsi_infer.rect import Rect
from wsi_infer.tissue import TissueMask, detect_tissue, tissue_from_rgb


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_tissue_disc_is_found_and_glass_is_not() -> None:
    rgb = tissue_image(300, 400)
    yy, xx = np.mgrid[:300, :400]
    truth = (yy - 150) ** 2 + (xx - 400 / 3) ** 2 < 100**2
    mask, modality = tissue_from_rgb(rgb, mpp=8.0, margin_um=0)
    assert modality == "brightfield"
    assert iou(mask, truth) > 0.9


@pytest.mark.parametrize("value", [0, 245, 255])
def test_blank_glass_black_padding_and_white_are_not_tissue(value: int) -> None:
    rng = np.random.default_rng(0)
    rgb = np.clip(np.full((200, 200, 3), value, float) + rng.normal(0, 2, (200, 200, 3)), 0, 255)
    mask, _ = tissue_from_rgb(rgb, mpp=8.0)
    assert not mask.any()


def test_black_padding_beside_tissue_is_excluded() -> None:
    rgb = tissue_image(300, 400)
    rgb[:, 300:] = 0  # scanner padding on the right
    mask, modality = tissue_from_rgb(rgb, mpp=8.0, margin_um=0)
    assert modality == "brightfield"
    assert not mask[:, 310:].any() and mask[:, :250].any()


def test_mask_lookup_at_another_resolution() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2, 3] = True  # µm [24, 32) x [16, 24)
    tm = TissueMask(mask, 8.0, 8.0, "brightfield")
    assert tm.any_in(Rect(3, 2, 4, 3), 8.0, 8.0)
    assert not tm.any_in(Rect(0, 0, 3, 2), 8.0, 8.0)
    assert tm.any_in(Rect(12, 8, 13, 9), 2.0, 2.0)  # µm [24, 26) x [16, 18)
    assert not tm.any_in(Rect(16, 8, 20, 12), 2.0, 2.0)  # µm [32, 40): the next mask pixel


@pytest.mark.realdata
def test_real_brightfield_slide_tissue_fraction() -> None:
    with open_slide(shared_slide("CMU-1-Small-Region.svs")) as slide:
        mask = detect_tissue(slide, slide.mpp)  # type: ignore[arg-type]
    assert mask.modality == "brightfield" and 0.3 < mask.fraction < 0.75
    # the top-right corner of this crop is glass
    h, w = mask.mask.shape
    assert not mask.mask[: h // 10, -w // 6 :].any()


@pytest.mark.realdata
def test_real_fluorescence_slide_is_recognised() -> None:
    with open_slide(shared_slide("test3-DAPI-2-387.ndpi")) as slide:
        mask = detect_tissue(slide, slide.mpp)  # type: ignore[arg-type]
    assert mask.modality == "fluorescence" and 0.1 < mask.fraction < 0.9
