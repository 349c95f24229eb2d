"""Model cards, bare model files, and the real third-party ONNX model."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from modelzoo import red_channel_onnx, write_card
from slides import SHARED, shared_slide, tissue_image, write_pyramid

from wsi_infer.errors import ChecksumError, ModelError
from wsi_infer.models import BareModel, load_card, resolve_model
from wsi_infer.pipeline import RunOptions, run_slide
from wsi_infer.rect import Rect


def test_card_errors_name_the_field(tmp_path: Path) -> None:
    red_channel_onnx(tmp_path / "red.onnx")
    path = write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["red"])
    card = json.loads(path.read_text())
    for mutate, field in [
        (lambda c: c.update(mpp=-1), "mpp"),
        (lambda c: c["output"].update(activation="relu"), "output.activation"),
        (lambda c: c["weights"][0].update(sha256="xyz"), "weights.0.sha256"),
        (lambda c: c["input"].pop("mean"), "input"),
        (lambda c: c.update(extra=1), "(top level)"),
    ]:
        broken = json.loads(json.dumps(card))
        mutate(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(ModelError, match=r"red\.json: invalid model card: field " + re.escape(field)):
            load_card(path)
    path.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_card(path)
    card["weights"][0]["file"] = "../outside.onnx"
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="outside the card's folder"):
        load_card(path)


def test_checksum_is_verified_before_loading(tmp_path: Path) -> None:
    from wsi_infer.models import verified_weights

    red_channel_onnx(tmp_path / "red.onnx")
    card = load_card(write_card(tmp_path, "red", {"onnx": "red.onnx"}, mpp=0.5, margin=0, classes=["r"]))
    assert verified_weights(card, "onnx") == (tmp_path / "red.onnx").resolve()
    red_channel_onnx(tmp_path / "red.onnx", layout="NHWC")  # replaced after the card was written
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        verified_weights(card, "onnx")
    with pytest.raises(ModelError, match="has no torchscript weights"):
        card.weights_for("torchscript")


def test_bare_nhwc_fixed_size_onnx_reads_its_layout_and_size(tmp_path: Path) -> None:
    model = red_channel_onnx(tmp_path / "red_nhwc.onnx", layout="NHWC", size=64)
    card = resolve_model(str(model), BareModel(mpp=0.5, classes=("red",)))
    assert card.input.layout == "NHWC" and card.input.size == (64, 64)
    rgb = tissue_image(300, 410)
    slide = write_pyramid(tmp_path / "s.tif", rgb, mpp=0.5)
    run_slide(slide, tmp_path / "o.zarr", RunOptions(model=str(model), tissue_mask=False,
                                                     bare_model=BareModel(mpp=0.5, classes=("red",))))
    out = np.asarray(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][0])
    np.testing.assert_array_equal(out, rgb[..., 0])  # blended identical tiles: exact


def test_bare_model_needs_mpp_and_matching_classes(tmp_path: Path) -> None:
    model = red_channel_onnx(tmp_path / "red.onnx")
    with pytest.raises(ModelError, match="--model-mpp"):
        resolve_model(str(model), BareModel())
    with pytest.raises(ModelError, match="1 output channels but --classes names 2"):
        resolve_model(str(model), BareModel(mpp=1.0, classes=("a", "b")))


#: What a card would say about the third-party U-Net (see ../shared/data/SOURCES.md).
BEST_UNET = BareModel(mpp=8.0, classes=("tissue",), activation="none")


@pytest.fixture
def best_unet(tmp_path: Path) -> Path:
    """A copy of ../shared/data/models/best_unet.onnx (skipped when absent)."""
    source = SHARED / "models" / "best_unet.onnx"
    if not source.exists():
        pytest.skip("best_unet.onnx not present")
    model = tmp_path / "best_unet.onnx"
    shutil.copy(source, model)
    return model


@pytest.mark.realdata
def test_real_third_party_unet_nhwc_sigmoid(best_unet: Path, tmp_path: Path) -> None:
    slide = shared_slide("CMU-1-Small-Region.svs")
    model, bare = best_unet, BEST_UNET
    card = resolve_model(str(model), bare)
    assert card.input.layout == "NHWC" and card.input.size == (500, 500)
    out = tmp_path / "o.zarr"
    run_slide(slide, out, RunOptions(model=str(model), bare_model=bare, tissue_mask=False))
    group = zarr.open_group(str(out), mode="r")
    probability = np.asarray(group["0"][0]) / 255
    from wsi_infer.readers import open_slide
    from wsi_infer.resolution import plan_level, read_target
    from wsi_infer.tissue import tissue_from_rgb

    with open_slide(slide) as s:
        plan = plan_level(s, s.mpp, 8.0)  # type: ignore[arg-type]
        reference, _ = tissue_from_rgb(read_target(s, plan, Rect(0, 0, plan.width, plan.height)), mpp=8.0,
                                       margin_um=0)
    predicted = probability > 0.6  # upstream's threshold
    dice = 2 * (predicted & reference).sum() / (predicted.sum() + reference.sum())
    print(f"best_unet vs wsi-infer tissue detection on CMU-1-Small-Region: Dice {dice:.3f}")
    assert dice > 0.8


@pytest.mark.parametrize("name", ["tissue", "nuclei"])
def test_builtin_model_same_on_both_backends(name: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    slide = write_pyramid(tmp_path / "s.tif", tissue_image(900, 1300), mpp=0.5)
    outputs = []
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.zarr"
        run_slide(slide, out, RunOptions(model=name, backend=backend, dtype="float32"))
        outputs.append(np.asarray(zarr.open_group(str(out), mode="r")["0"][:]))
    assert outputs[0].any()
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4


@pytest.mark.realdata
def test_real_third_party_unet_agrees_with_builtin_tissue_model(best_unet: Path, tmp_path: Path) -> None:
    slide = shared_slide("CMU-1-Small-Region.svs")
    model, bare = best_unet, BEST_UNET
    run_slide(slide, tmp_path / "unet.zarr", RunOptions(model=str(model), bare_model=bare))
    run_slide(slide, tmp_path / "builtin.zarr", RunOptions(model="tissue"))
    unet = np.asarray(zarr.open_group(str(tmp_path / "unet.zarr"), mode="r")["0"][0]) > 0.6 * 255
    builtin = np.asarray(zarr.open_group(str(tmp_path / "builtin.zarr"), mode="r")["0"][0]) > 127
    # compare on the coarser (8 µm) grid: each 8 µm pixel covers 2×2 pixels at 4 µm
    h, w = unet.shape
    coarse = builtin[: 2 * h, : 2 * w]
    coarse = np.pad(coarse, ((0, 2 * h - coarse.shape[0]), (0, 2 * w - coarse.shape[1])))
    coarse = coarse.reshape(h, 2, w, 2).mean(axis=(1, 3)) >= 0.5
    dice = 2 * (unet & coarse).sum() / (unet.sum() + coarse.sum())
    print(f"best_unet (8 µm) vs built-in tissue model (4 µm) on CMU-1-Small-Region: Dice {dice:.3f}")
    assert dice > 0.8


def test_an_installed_wheel_finds_its_built_in_models_under_any_prefix(tmp_path: Path) -> None:
    """A wheel installed with --prefix (or --user) puts the models where its install scheme
    puts data, not under sys.prefix: they are found through the wheel's own file list."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"),
                    str(root)], check=True, capture_output=True)
    wheel = next((tmp_path / "w").glob("wsi_infer-*.whl"))
    prefix = tmp_path / "prefix"
    # --ignore-installed: never uninstall the wsi-infer this test runs with
    subprocess.run([*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
                    str(wheel)], check=True, capture_output=True)
    site = next(prefix.glob("lib/python*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages")]
    result = subprocess.run(
        [sys.executable, "-c", ("import wsi_infer.models as m; print(m.__file__); "
                                "print(m.BUILTIN_MODELS_DIR); print(sorted(m.builtin_models()))")],
        capture_output=True, text=True, cwd=tmp_path, check=True,
        env={"PYTHONPATH": os.pathsep.join([str(site), *here]), "PATH": os.environ["PATH"],
             "PYTHONNOUSERSITE": "1"}, )
    module, models_dir, names = result.stdout.splitlines()
    assert module.startswith(str(site))
    assert Path(models_dir) == prefix / "share" / "wsi-infer" / "models"
    assert names == "['nuclei', 'tissue']"
