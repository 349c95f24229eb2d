"""The run key covers everything that decides an output's pixels: a resumed run never keeps
results of a different model, card, reader, grid, resampling, dtype or runtime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from modelzoo import conv_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer import plan as planning
from wsi_infer.batch import collect_items, run_batch
from wsi_infer.models import BareModel, resolve_model
from wsi_infer.plan import RunOptions, plan_run
from wsi_infer.readers import open_slide


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    return write_pyramid(tmp_path / "s.tif", tissue_image(300, 400), mpp=0.5)


@pytest.fixture
def card(tmp_path: Path) -> Path:
    conv_onnx(tmp_path / "conv.onnx", kernel=3, classes=2)
    return write_card(tmp_path, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=1, classes=["a", "b"],
                      activation="softmax")


def key(slide: Path, options: RunOptions, reader: str = "auto") -> str:
    card = resolve_model(options.model, options.bare_model)
    with open_slide(slide, reader) as s:  # type: ignore[arg-type]
        return plan_run(s, card, options).key


def edited(card: Path, change: dict[str, object], name: str) -> Path:
    """A copy of the card beside it (same weights) with ``change`` (dotted keys) applied."""
    data = json.loads(card.read_text())
    for dotted, value in change.items():
        *parents, leaf = dotted.split(".")
        target = data
        for p in parents:
            target = target[p]
        target[leaf] = value
    path = card.with_name(f"{name}.json")
    path.write_text(json.dumps(data))
    return path


CARD_CHANGES = {
    "mpp": {"mpp": 0.25}, "mean": {"input.mean": [0.1, 0.1, 0.1]}, "std": {"input.std": [2, 2, 2]},
    "scale": {"input.scale": 1.0}, "order": {"input.channel_order": "BGR"},
    "activation": {"output.activation": "sigmoid"},
    "classes": {"output.classes": [{"name": "x"}, {"name": "b"}]},
    "margin": {"receptive_margin": 2}, "card_tile": {"input.tile_size": 128},
    "multiple": {"input.size_multiple": 4}, "range": {"output.range": [0, 2]},
}
OPTION_CHANGES = {
    "tile_size": {"tile_size": 64}, "halo": {"halo": 4}, "chunk": {"chunk_size": 1024},
    "dtype": {"dtype": "float32"}, "tissue": {"tissue_mask": False}, "mpp": {"mpp": 0.45},
    "backend": {"backend": "torch"}, "device": {"device": "cuda"}, "fp16": {"fp16": True},
}


def test_every_field_that_decides_pixels_changes_the_key(slide: Path, card: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    base = RunOptions(model=str(card))
    keys = {"base": key(slide, base)}
    assert key(slide, base) == keys["base"]  # stable
    assert key(slide, dataclasses.replace(base, workers=7, threads=1, batch_size=3,
                                          overwrite=True)) == keys["base"]  # speed, not pixels
    for name, change in CARD_CHANGES.items():
        keys[f"card.{name}"] = key(slide, dataclasses.replace(base, model=str(edited(card, change, name))))
    for name, change in OPTION_CHANGES.items():
        keys[f"option.{name}"] = key(slide, dataclasses.replace(base, **change))  # type: ignore[arg-type]
    keys["reader"] = key(slide, dataclasses.replace(base, reader="openslide"), reader="openslide")
    monkeypatch.setattr(planning, "RESAMPLING_VERSION", planning.RESAMPLING_VERSION + 1)
    keys["resampling"] = key(slide, base)
    monkeypatch.undo()
    monkeypatch.setattr(planning, "TISSUE_VERSION", planning.TISSUE_VERSION + 1)
    keys["tissue_version"] = key(slide, base)
    same = {k for k, v in keys.items() if k != "base" and v == keys["base"]}
    assert not same, f"these changes keep the key: {sorted(same)}"
    assert len(set(keys.values())) == len(keys)


def test_bare_model_flags_change_the_key(slide: Path, tmp_path: Path) -> None:
    model = conv_onnx(tmp_path / "bare.onnx", kernel=3, classes=1)
    bare = BareModel(mpp=0.5, classes=("t",), activation="sigmoid")
    base = RunOptions(model=str(model), bare_model=bare)
    keys = {key(slide, base)}
    for change in ({"mpp": 0.25}, {"activation": "none"}, {"mean": (1.0, 1.0, 1.0)},
                   {"std": (2.0, 2.0, 2.0)}, {"scale": 1.0}, {"receptive_margin": 3},
                   {"size_multiple": 8}, {"classes": ("u",)}, {"layout": "NHWC"}):
        keys.add(key(slide, dataclasses.replace(base, bare_model=dataclasses.replace(bare, **change))))  # type: ignore[arg-type]
    assert len(keys) == 10  # the base and each of the nine changes


def test_a_resumed_batch_recomputes_when_the_card_changes_but_not_the_weights(
        slide: Path, card: Path, tmp_path: Path) -> None:
    items = collect_items([slide])
    out = tmp_path / "out"
    assert run_batch(items, out, RunOptions(model=str(card))).slides[0].status == "done"
    assert run_batch(items, out, RunOptions(model=str(card))).slides[0].status == "skipped"
    changed = edited(card, {"mpp": 0.25, "input.mean": [0.2, 0.2, 0.2]}, "conv")  # same weights
    assert changed == card
    report = run_batch(items, out, RunOptions(model=str(card)))
    assert report.slides[0].status == "done"
    info = json.loads((out / "s.zarr" / ".zattrs").read_text())["wsi_infer"]
    assert info["model"]["mpp"] == 0.25 and info["status"] == "complete"
