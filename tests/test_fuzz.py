"""Fuzz the parsers of untrusted text: they either succeed or raise our own clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsi_infer.batch import read_csv_manifest
from wsi_infer.errors import ModelError, WsiInferError
from wsi_infer.models import parse_card
from wsi_infer.readers import parse_mpp

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)

VALID = {
    "schema_version": 1, "name": "m", "version": "1", "task": "segmentation",
    "weights": [{"format": "onnx", "file": "m.onnx", "sha256": "0" * 64}],
    "input": {"layout": "NCHW", "channel_order": "RGB", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]},
    "mpp": 0.5, "receptive_margin": 0,
    "output": {"classes": [{"name": "a"}], "activation": "sigmoid"},
}


@FAST
@given(json_values)
def test_arbitrary_json_is_a_card_or_a_model_error(data: object) -> None:
    try:
        parse_card(data, Path("/models/card.json"))
    except ModelError as exc:
        assert "card.json" in str(exc)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


@FAST
@given(st.sampled_from(_paths(VALID)), json_values)
def test_one_wrong_field_is_named(path: tuple, value: object) -> None:  # type: ignore[type-arg]
    card = json.loads(json.dumps(VALID))
    target = card
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        parse_card(card, Path("/models/card.json"))
    except ModelError as exc:
        assert "invalid model card: field" in str(exc)


@FAST
@given(st.text(max_size=300))
def test_csv_manifest_text(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("csv") / "m.csv"
    path.write_text(text, encoding="utf-8")
    try:
        items = read_csv_manifest(path)
    except WsiInferError as exc:
        assert "m.csv" in str(exc)
    else:
        assert all(item.mpp is None or item.mpp > 0 for item in items)


@FAST
@given(json_values, json_values)
def test_mpp_metadata_values(x: object, y: object) -> None:
    try:
        mpp = parse_mpp(x, y, source="test")
    except ValueError as exc:
        assert "test" in str(exc)
    else:
        assert mpp is None or (mpp.x > 0 and mpp.y > 0)
