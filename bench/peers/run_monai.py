"""MONAI 1.6: a tiled WSI segmentation pipeline built from MONAI's pathology parts.

    python bench/peers/run_monai.py SLIDE OUT_DIR          # prints a JSON line last

* ``monai.data.WSIReader(backend="openslide")`` opens the slide; the level is the one whose mpp
  is within MONAI's default tolerance (rtol 5 %) of 0.5 µm/px, else the finest level, read
  ``f = 0.5 / level_mpp`` times larger and shrunk by ``Resized(mode="area")`` (f = 2 on a
  0.25 µm/px slide: a 2×2 box mean).
* Tissue: ``ForegroundMask(hsv_threshold={"S": "otsu"})`` on the coarsest level, exactly as
  ``MaskedPatchWSIDataset`` builds its mask; a tile runs when its 512-px output square holds
  foreground.
* Tiles: 544-px windows (512 + the 16-px receptive margin each side) on a 512-px grid at
  0.5 µm/px, read by ``PatchWSIDataset`` through ``monai.data.DataLoader`` (batch 8, 2 workers),
  ``ScaleIntensityRanged`` + ``NormalizeIntensityd`` = the card's ``(p/255 − 0.5)/0.25``,
  sigmoid, the central 512 px written into a uint8 ``numpy`` memmap probability map
  (``OUT_DIR/monai-map.npy``; pixels outside tissue tiles stay 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import numpy as np
import torch
from monai.data import DataLoader, PatchWSIDataset, WSIReader
from monai.transforms import (
    Compose,
    ForegroundMask,
    NormalizeIntensityd,
    Resized,
    ScaleIntensityRanged,
)

CARD = common.load_card()


def plan(reader: WSIReader, wsi: Any) -> tuple[int, float, float]:
    """(level to read, its level-0 downsample, factor f from it to 0.5 µm/px)."""
    levels = reader.get_level_count(wsi)
    mpps = [float(np.mean(reader.get_mpp(wsi, lv))) for lv in range(levels)]
    close = [lv for lv, m in enumerate(mpps) if abs(m - CARD.mpp) <= reader.mpp_rtol * CARD.mpp]
    level = close[0] if close else max((lv for lv, m in enumerate(mpps) if m <= CARD.mpp), default=0)
    factor = 1.0 if close else CARD.mpp / mpps[level]
    return level, float(reader.get_downsample_ratio(wsi, level)), factor


def tissue_tiles(reader: WSIReader, wsi: Any, out_h: int, out_w: int,
                 out_mpp: tuple[float, float]) -> list[tuple[int, int]]:
    """Grid tiles (row, col) whose 512-px output square holds MONAI foreground."""
    mask_level = reader.get_level_count(wsi) - 1
    image, _ = reader.get_data(wsi, level=mask_level)
    mask = np.squeeze(np.asarray(ForegroundMask(hsv_threshold={"S": "otsu"})(image))).astype(bool)
    mask_mpp = reader.get_mpp(wsi, mask_level)  # (y, x)
    tiles = []
    for ty in range(-(-out_h // CARD.tile)):
        for tx in range(-(-out_w // CARD.tile)):
            y0, x0 = ty * CARD.tile * out_mpp[0], tx * CARD.tile * out_mpp[1]  # µm
            y1 = min(out_h, (ty + 1) * CARD.tile) * out_mpp[0]
            x1 = min(out_w, (tx + 1) * CARD.tile) * out_mpp[1]
            my0, my1 = int(y0 // mask_mpp[0]), int(np.ceil(y1 / mask_mpp[0]))
            mx0, mx1 = int(x0 // mask_mpp[1]), int(np.ceil(x1 / mask_mpp[1]))
            if mask[my0:my1, mx0:mx1].any():
                tiles.append((ty, tx))
    return tiles


def run(slide: Path, out_dir: Path) -> dict:
    """Segment ``slide``; the probability map goes to ``out_dir/monai-map.npy``."""
    common.setup_torch()
    watch = common.Stopwatch()
    reader = WSIReader(backend="openslide")
    wsi = reader.read(str(slide))
    level, downsample, factor = plan(reader, wsi)
    level_h, level_w = reader.get_size(wsi, level)
    level_mpp = reader.get_mpp(wsi, level)
    out_mpp = (level_mpp[0] * factor, level_mpp[1] * factor)
    out_h, out_w = round(level_h / factor), round(level_w / factor)
    tiles = tissue_tiles(reader, wsi, out_h, out_w, out_mpp)

    read = round(CARD.window * factor)  # window size at the read level
    step0 = downsample * factor  # level-0 px per output px
    data = [{"image": str(slide), "size": (read, read), "level": level,
             "location": (round((ty * CARD.tile - CARD.margin) * step0),
                          round((tx * CARD.tile - CARD.margin) * step0))} for ty, tx in tiles]
    steps = [ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1),
             NormalizeIntensityd("image", subtrahend=list(CARD.mean), divisor=list(CARD.std),
                                 channel_wise=True)]
    if read != CARD.window:
        steps.insert(0, Resized("image", spatial_size=(CARD.window, CARD.window), mode="area"))
    dataset = PatchWSIDataset(data, reader="OpenSlide", include_label=False, center_location=False,
                              transform=Compose(steps))
    loader = DataLoader(dataset, batch_size=common.BATCH, num_workers=common.THREADS, shuffle=False)

    prob = np.lib.format.open_memmap(out_dir / "monai-map.npy", mode="w+", dtype=np.uint8,
                                     shape=(out_h, out_w))
    covered = np.lib.format.open_memmap(out_dir / "monai-map.cov.npy", mode="w+", dtype=bool,
                                        shape=(out_h, out_w))
    model = common.load_model(CARD)
    m, t, done = CARD.margin, CARD.tile, 0
    with torch.inference_mode():
        for batch in loader:
            x = torch.as_tensor(batch["image"], dtype=torch.float32)
            p = torch.sigmoid(model(x))[:, 0, m:m + t, m:m + t]
            p = torch.round(p * 255).to(torch.uint8).numpy()
            for k in range(p.shape[0]):
                ty, tx = tiles[done + k]
                y0, x0 = ty * t, tx * t
                h, w = min(t, out_h - y0), min(t, out_w - x0)
                prob[y0:y0 + h, x0:x0 + w] = p[k, :h, :w]
                covered[y0:y0 + h, x0:x0 + w] = True
            done += p.shape[0]
    prob.flush()
    covered.flush()
    timed = watch.result()
    (out_dir / "monai-map.json").write_text(
        f'{{"mpp_x": {out_mpp[1]}, "mpp_y": {out_mpp[0]}, "level": {level}, "factor": {factor}}}')
    return {"tool": "monai", "tiles": done, "inner_seconds": timed["seconds"],
            "inner_cpu": timed["cpu"], "output": str(out_dir / "monai-map.npy"), "level": level,
            "read_px": read}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    common.emit(run(args.slide.resolve(), args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
