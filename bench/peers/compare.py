"""Agreement of the peers' outputs with wsi-infer's, on tissue pixels, in physical coordinates.

    .venv/bin/python bench/peers/compare.py SLIDE WSI_INFER.zarr [--map NAME=PREFIX ...]
        [--patches NAME=CSV]                                     # prints one JSON line

Runs in wsi-infer's environment (it uses wsi-infer's tissue detector and reads its OME-Zarr).

* The reference grid is wsi-infer's level 0 (uint8 p×255, channel 0 = nuclei); its pixel
  ``(i, j)`` covers ``[j·mpp_x, (j+1)·mpp_x) × [i·mpp_y, (i+1)·mpp_y)`` µm of the slide
  (docs/output.md).  A peer map (``PREFIX.npy`` / ``.cov.npy`` / ``.json``, see
  ``common.save_probability_map``) is sampled at the centre of each reference pixel (nearest
  neighbour on its own grid), so tools whose grids differ slightly (0.5 vs 0.499 µm/px on
  CMU-1) or are offset are compared at the same places of the slide.
* Tissue pixels: wsi-infer's tissue detector without its 32 µm safety margin
  (``tissue_from_rgb(..., margin_um=0)`` on the 8 µm/px thumbnail), nearest neighbour.
  Pixels compared = tissue pixels both tools computed; ``coverage`` = that over all tissue
  pixels (tools mask tissue differently, so they compute different areas).
* Reported: mean |Δp|, max |Δp| (in probability units, after each tool's uint8 rounding),
  fraction of compared pixels whose masks at p ≥ 0.5 agree, and the Dice of those masks.
* ``--patches`` (WSInfer's CSV: patch boxes at level 0 and one probability each) compares
  each patch's probability with the mean of wsi-infer's p over the same central tile.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_infer import resolution
from wsi_infer.readers import open_slide
from wsi_infer.tissue import TISSUE_MPP, tissue_from_rgb

ROWS = 1024  # rows compared at a time (bounded memory on large slides)


def tissue_mask(slide_path: str) -> tuple[np.ndarray, float, float]:
    """wsi-infer's tissue mask without the safety margin, and its µm/px."""
    slide = open_slide(slide_path)
    assert slide.mpp is not None
    plan = resolution.plan_level(slide, slide.mpp, max(TISSUE_MPP, slide.mpp.x, slide.mpp.y))
    whole = getattr(resolution, "read_target_whole", None)  # newer wsi-infer: block by block
    rgb = whole(slide, plan) if whole else resolution.read_target(slide, plan, 0, 0, plan.width,
                                                                     plan.height)
    mask, _ = tissue_from_rgb(rgb, mpp=(plan.mpp_x + plan.mpp_y) / 2, margin_um=0)
    return mask, plan.mpp_x, plan.mpp_y


def _centres(start: int, stop: int, mpp: float, to_mpp: float, size: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Indices on a ``to_mpp`` grid (``size`` long) of the centres of pixels ``start:stop`` of
    an ``mpp`` grid, clipped, and whether each falls inside."""
    idx = np.floor((np.arange(start, stop) + 0.5) * mpp / to_mpp).astype(np.int64)
    return np.clip(idx, 0, size - 1), idx < size


def compare_map(ref: zarr.Array, ref_mpp: tuple[float, float], tissue: tuple[np.ndarray, float, float],
                prefix: Path) -> dict[str, float]:
    """Pixel agreement of one peer map with wsi-infer's level 0 on tissue pixels.

    ``prefix`` is a peer map (``.npy`` + ``.cov.npy`` + ``.json``) or another wsi-infer
    OME-Zarr (``*.zarr``, e.g. its torch backend: same tissue mask, so every pixel counts).
    """
    prob: Any
    if prefix.suffix == ".zarr":
        group = zarr.open_group(str(prefix), mode="r")
        level0: Any = group["0"]
        prob = np.asarray(level0[0])
        cov = np.ones(prob.shape, bool)
        attrs: Any = group.attrs.asdict()["wsi_infer"]
        grid = {"mpp_x": attrs["output"]["mpp_x"], "mpp_y": attrs["output"]["mpp_y"]}
    else:
        prob = np.load(prefix.with_suffix(".npy"), mmap_mode="r")
        cov = np.load(prefix.with_suffix(".cov.npy"), mmap_mode="r")
        grid = json.loads(prefix.with_suffix(".json").read_text())
    _, height, width = ref.shape
    mask, tmx, tmy = tissue
    tcols, tcol_ok = _centres(0, width, ref_mpp[0], tmx, mask.shape[1])
    pcols, pcol_ok = _centres(0, width, ref_mpp[0], grid["mpp_x"], prob.shape[1])
    n = n_tissue = agree = both = either = 0
    abs_sum, abs_max = 0.0, 0
    for r0 in range(0, height, ROWS):
        r1 = min(height, r0 + ROWS)
        trows, trow_ok = _centres(r0, r1, ref_mpp[1], tmy, mask.shape[0])
        prows, prow_ok = _centres(r0, r1, ref_mpp[1], grid["mpp_y"], prob.shape[0])
        t = mask[trows][:, tcols] & trow_ok[:, None] & tcol_ok[None, :]
        n_tissue += int(t.sum())
        peer_p = np.asarray(prob[prows])[:, pcols]
        peer_cov = np.asarray(cov[prows])[:, pcols] & prow_ok[:, None] & pcol_ok[None, :]
        sel = t & peer_cov
        if not sel.any():
            continue
        a = np.asarray(ref[0, r0:r1, :])[sel].astype(np.int16)
        b = peer_p[sel].astype(np.int16)
        d = np.abs(a - b)
        n += int(sel.sum())
        abs_sum += float(d.sum())
        abs_max = max(abs_max, int(d.max()))
        ma, mb = a >= 128, b >= 128
        agree += int((ma == mb).sum())
        both += int((ma & mb).sum())
        either += int(ma.sum() + mb.sum())
    if n == 0:
        return {"compared_px": 0, "coverage": 0.0}
    return {"compared_px": n, "coverage": n / max(1, n_tissue), "mean_abs_dp": abs_sum / n / 255,
            "max_abs_dp": abs_max / 255, "mask_agreement": agree / n,
            "dice": 2 * both / either if either else 1.0}


def compare_patches(ref: zarr.Array, ref_mpp: tuple[float, float], slide_mpp: tuple[float, float],
                    csv_path: Path, margin_um: float) -> dict[str, float]:
    """Per-patch probability vs wsi-infer's mean p over the patch's central tile."""
    diffs = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            x0, y0 = float(row["minx"]) * slide_mpp[0], float(row["miny"]) * slide_mpp[1]
            x1 = x0 + float(row["width"]) * slide_mpp[0]
            y1 = y0 + float(row["height"]) * slide_mpp[1]
            c0, c1 = round((x0 + margin_um) / ref_mpp[0]), round((x1 - margin_um) / ref_mpp[0])
            r0, r1 = round((y0 + margin_um) / ref_mpp[1]), round((y1 - margin_um) / ref_mpp[1])
            block = np.asarray(ref[0, max(0, r0):r1, max(0, c0):c1], dtype=np.float64)
            if block.size:
                diffs.append(abs(block.mean() / 255 - float(row["prob_nuclei"])))
    return {"patches": len(diffs), "patch_mean_abs_dp": float(np.mean(diffs)) if diffs else float("nan"),
            "patch_max_abs_dp": float(np.max(diffs)) if diffs else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("reference", help="wsi-infer's OME-Zarr")
    parser.add_argument("--map", action="append", default=[], metavar="NAME=PREFIX")
    parser.add_argument("--patches", action="append", default=[], metavar="NAME=CSV")
    parser.add_argument("--margin-um", type=float, default=8.0,
                        help="receptive margin the patch wrapper excludes (16 px at 0.5 µm/px)")
    args = parser.parse_args()
    group = zarr.open_group(args.reference, mode="r")
    attrs: Any = group.attrs.asdict()["wsi_infer"]
    ref = group["0"]
    assert isinstance(ref, zarr.Array)
    ref_mpp = (attrs["output"]["mpp_x"], attrs["output"]["mpp_y"])
    slide_mpp = (attrs["slide"]["mpp_x"], attrs["slide"]["mpp_y"])
    tissue = tissue_mask(args.slide)
    out: dict[str, dict[str, float]] = {}
    for item in args.map:
        name, prefix = item.split("=", 1)
        out[name] = compare_map(ref, ref_mpp, tissue, Path(prefix))
    for item in args.patches:
        name, path = item.split("=", 1)
        out[name] = compare_patches(ref, ref_mpp, slide_mpp, Path(path), args.margin_um)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
