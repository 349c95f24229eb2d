"""WSInfer 0.6.1: the nuclei FCN registered as a local patch-classification model.

    python bench/peers/run_wsinfer.py SLIDE OUT_DIR                # prints a JSON line last

WSInfer classifies patches, so the model it runs is a traced wrapper around the nuclei
TorchScript: the FCN over the whole 544-px patch (the same convolutions per patch as one
wsi-infer tile), sigmoid, mean probability over the central 512 px, returned as a logit so
that WSInfer's own sigmoid gives that mean back ("fraction of the patch that is nuclei").

Its config (the ``wsinfer run --config`` JSON, spec 1.0): patch 544 px at 0.5 µm/px,
transforms Resize(544) → ToTensor → Normalize(mean 0.5, std 0.25) (= the card's
``(p/255 − 0.5)/0.25``).  Patch overlap 32/544, so the step is 512 px at 0.5 µm/px: the
same patch grid pitch as wsi-infer's tiles.  WSInfer's own tissue detection and patching
(default ``--seg-*`` settings), batch 8, 2 data-loader workers, 2 torch threads.

The ``wsinfer run`` command cannot start offline: building its ``--model`` choices downloads
the model-zoo registry from the Hugging Face hub at import time (``LocalEntryNotFoundError``
with no network).  So this runner calls the same library functions ``wsinfer run`` calls, in
the same order, with its defaults: ``segment_and_patch_directory_of_slides``,
``run_inference``, ``write_geojsons``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.shim_torchvision()


def shim_zarr_kvstore() -> None:
    """``import wsinfer`` patches ``zarr.storage.KVStore`` (for tiffslide), which zarr 3 lacks
    (TIAToolbox needs zarr 3 in the same venv).  Openslide is the slide backend here, so the
    patch is moot: give it a stand-in class to patch."""
    import zarr.storage

    if not hasattr(zarr.storage, "KVStore"):
        zarr.storage.KVStore = type("KVStore", (), {})  # type: ignore[attr-defined]


shim_zarr_kvstore()

import torch

CARD = common.load_card()


class PatchMean(torch.nn.Module):
    """FCN → per-patch logit of the mean nuclei probability over the central tile."""

    def __init__(self, fcn: torch.nn.Module, margin: int) -> None:
        super().__init__()
        self.fcn = fcn
        self.margin = margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.margin
        p = torch.sigmoid(self.fcn(x))[:, :, m:x.shape[2] - m, m:x.shape[3] - m]
        return torch.logit(p.mean(dim=(2, 3)), eps=1e-6)  # (N, 1)


def make_model(out_dir: Path) -> tuple[Path, Path]:
    """Trace the wrapper and write the WSInfer model config beside it."""
    model = PatchMean(common.load_model(CARD), CARD.margin).eval()
    example = torch.zeros(1, 3, CARD.window, CARD.window)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    model_path, config_path = out_dir / "nuclei-patch-mean.pt", out_dir / "nuclei-patch-mean.json"
    traced.save(str(model_path))
    config = {
        "spec_version": "1.0",
        "architecture": "nuclei-fcn-patch-mean",
        "num_classes": 1,
        "class_names": ["nuclei"],
        "patch_size_pixels": CARD.window,
        "spacing_um_px": CARD.mpp,
        "transform": [
            {"name": "Resize", "arguments": {"size": CARD.window}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(CARD.mean), "std": list(CARD.std)}},
        ],
    }
    config_path.write_text(json.dumps(config, indent=2))
    return model_path, config_path


def run(slide: Path, out_dir: Path) -> dict:
    """``wsinfer run`` on a folder holding only ``slide``; results in ``out_dir/wsinfer/``."""
    from wsinfer.modellib.models import LocalModelTorchScript
    from wsinfer.modellib.run_inference import run_inference
    from wsinfer.patchlib import segment_and_patch_directory_of_slides
    from wsinfer.write_geojson import write_geojsons
    from wsinfer_zoo.client import ModelConfiguration

    common.setup_torch()
    os.environ["WSINFER_FORCE_CPU"] = "1"
    work = out_dir / "wsinfer"
    shutil.rmtree(work, ignore_errors=True)
    wsi_dir, results = work / "slides", work / "results"
    wsi_dir.mkdir(parents=True)
    (wsi_dir / slide.name).symlink_to(slide)
    model_path, config_path = make_model(work)

    watch = common.Stopwatch()
    config = ModelConfiguration.from_dict(json.loads(config_path.read_text()))
    model = LocalModelTorchScript(config=config, model_path=str(model_path))
    overlap = 2 * CARD.margin / CARD.window  # step = window - 2 * margin = tile
    segment_and_patch_directory_of_slides(
        wsi_dir=wsi_dir, save_dir=results, patch_size_px=config.patch_size_pixels,
        patch_spacing_um_px=config.spacing_um_px, thumbsize=(2048, 2048), median_filter_size=7,
        binary_threshold=7, closing_kernel_size=6, min_object_size_um2=200**2,
        min_hole_size_um2=190**2, overlap=overlap)
    failed_patching, failed_inference = run_inference(
        wsi_dir=wsi_dir, results_dir=results, model_info=model, batch_size=common.BATCH,
        num_workers=common.THREADS, speedup=False)
    csvs = list((results / "model-outputs-csv").glob("*.csv"))
    write_geojsons(csvs, results, common.THREADS)
    timed = watch.result()
    if failed_patching or failed_inference or not csvs:
        raise RuntimeError(f"wsinfer failed: patching {failed_patching}, inference {failed_inference}")
    with open(csvs[0]) as f:
        tiles = sum(1 for _ in csv.DictReader(f))
    return {"tool": "wsinfer", "tiles": tiles, "inner_seconds": timed["seconds"],
            "inner_cpu": timed["cpu"], "output": str(csvs[0]), "overlap": overlap}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    common.emit(run(args.slide.resolve(), args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
