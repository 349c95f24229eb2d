"""Model cards: load, validate, verify checksums; the built-in model registry.

A model card is a JSON file beside the weights; its format is the JSON schema in
``wsi_infer/schemas/model-card.schema.json`` and is documented in ``docs/model-card.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

import jsonschema

from .errors import ChecksumError, ModelError

WeightsFormat = Literal["onnx", "torchscript"]
Activation = Literal["softmax", "sigmoid", "none"]
def _builtin_models_dir() -> Path:
    """``$WSI_INFER_MODELS``, else ``models/`` of the source tree (a checkout, an editable
    install), else where the installed wheel put them (its RECORD names the files, wherever
    the install scheme put its data: a venv, ``--user``, ``--prefix``)."""
    if "WSI_INFER_MODELS" in os.environ:
        return Path(os.environ["WSI_INFER_MODELS"])
    source_tree = Path(__file__).resolve().parents[1] / "models"
    if source_tree.is_dir():
        return source_tree
    try:
        files = metadata.distribution("wsi-infer").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "card.json" and "/".join(file.parts[-4:-2]) == "wsi-infer/models":
            return Path(str(file.locate())).resolve().parents[1]
    return Path(sys.prefix) / "share" / "wsi-infer" / "models"


#: Folder of built-in models: ``<dir>/<name>/card.json``.
BUILTIN_MODELS_DIR = _builtin_models_dir()
DEFAULT_MODEL = "tissue"


@dataclass(frozen=True)
class ClassInfo:
    """One output channel."""

    name: str
    color: str


@dataclass(frozen=True)
class WeightsFile:
    """A weights file and the checksum it must have."""

    format: WeightsFormat
    path: Path
    sha256: str


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as input."""

    layout: Literal["NCHW", "NHWC"]
    channel_order: Literal["RGB", "BGR"]
    size: tuple[int, int] | None  # (height, width) when fixed
    size_multiple: int
    tile_size: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelCard:
    """A validated model card."""

    name: str
    version: str
    description: str
    weights: tuple[WeightsFile, ...]
    input: InputSpec
    mpp: float
    receptive_margin: int
    classes: tuple[ClassInfo, ...]
    activation: Activation
    output_range: tuple[float, float]
    license: str
    citation: str
    path: Path
    content_sha256: str  # of the card's canonical JSON: changes with any field of the card

    def weights_for(self, fmt: WeightsFormat) -> WeightsFile:
        """The weights file in ``fmt``; a clear error if the card has none."""
        for weights in self.weights:
            if weights.format == fmt:
                return weights
        have = ", ".join(w.format for w in self.weights)
        raise ModelError(f"{self.path}: model {self.name!r} has no {fmt} weights (it has: {have})")

    @property
    def sha256(self) -> str:
        """The checksum of the first weights file, which identifies the model."""
        return self.weights[0].sha256


_DEFAULT_COLORS = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _schema() -> dict[str, Any]:
    text = resources.files("wsi_infer").joinpath("schemas/model-card.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def parse_card(data: object, path: Path) -> ModelCard:
    """Validate card data against the schema; errors name the file and the field."""
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ModelError(f"{path}: invalid model card: field {where}: {error.message}")
    assert isinstance(data, dict)
    inp, out = data["input"], data["output"]
    size = tuple(inp["size"]) if inp.get("size") else None
    classes = tuple(
        ClassInfo(c["name"], c.get("color", _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)]))
        for i, c in enumerate(out["classes"])
    )
    activation = out["activation"]
    return ModelCard(
        name=data["name"],
        version=data["version"],
        description=data.get("description", ""),
        weights=tuple(
            WeightsFile(w["format"], _resolve(path, w["file"]), w["sha256"]) for w in data["weights"]
        ),
        input=InputSpec(
            layout=inp["layout"],
            channel_order=inp["channel_order"],
            size=size,  # type: ignore[arg-type]
            size_multiple=int(inp.get("size_multiple", 1)),
            tile_size=int(inp.get("tile_size", size[0] if size else 512)),
            scale=float(inp["scale"]),
            mean=tuple(float(v) for v in inp["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in inp["std"]),  # type: ignore[arg-type]
        ),
        mpp=float(data["mpp"]),
        receptive_margin=int(data["receptive_margin"]),
        classes=classes,
        activation=activation,
        output_range=tuple(out.get("range", (0.0, 1.0))),  # type: ignore[arg-type]
        license=data.get("license", "unknown"),
        citation=data.get("citation", ""),
        path=path,
        content_sha256=canonical_sha256(data),
    )


def canonical_sha256(data: object) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resolve(card_path: Path, file: str) -> Path:
    weights = (card_path.parent / file).resolve()
    if card_path.parent.resolve() not in weights.parents:
        raise ModelError(f"{card_path}: weights file {file!r} lies outside the card's folder")
    return weights


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a model card file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: model card not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read model card: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: model card is not valid JSON: {exc}") from exc
    return parse_card(data, path)


def builtin_models() -> dict[str, Path]:
    """Names and card paths of the models shipped in ``models/``."""
    if not BUILTIN_MODELS_DIR.is_dir():
        return {}
    return {p.parent.name: p for p in sorted(BUILTIN_MODELS_DIR.glob("*/card.json"))}


@dataclass(frozen=True)
class BareModel:
    """What a card would say about a bare model file (``--model model.onnx`` and flags).

    Layout, fixed input size and the number of classes are read from the ONNX graph; the rest
    comes from here.
    """

    mpp: float | None = None
    classes: tuple[str, ...] | None = None
    activation: Activation = "none"
    layout: Literal["NCHW", "NHWC"] | None = None
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    receptive_margin: int = 16
    tile_size: int = 512
    size_multiple: int | None = None  # None: read from the ONNX graph (1 for TorchScript)


BARE_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


def resolve_model(spec: str, bare: BareModel | None = None) -> ModelCard:
    """A built-in model name, a path to a card, or a bare ``.onnx``/TorchScript file (then
    ``bare`` says what the card would)."""
    builtin = builtin_models()
    if spec in builtin:
        return load_card(builtin[spec])
    path = Path(spec)
    if path.is_dir():
        path = path / "card.json"
    if path.suffix.lower() in BARE_SUFFIXES:
        return card_for_bare_model(path, bare or BareModel())
    if path.suffix == ".json" or path.exists():
        return load_card(path)
    raise ModelError(
        f"unknown model {spec!r}: not a built-in model ({', '.join(builtin) or 'none installed'})"
        " and not a card file"
    )


def card_for_bare_model(path: Path, bare: BareModel) -> ModelCard:
    """Build (and validate) a card for a bare model file; its sha256 is taken from the file."""
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    fmt: WeightsFormat = BARE_SUFFIXES[path.suffix.lower()]  # type: ignore[assignment]
    if bare.mpp is None:
        raise ModelError(f"{path}: a bare model needs the mpp it was trained at: pass --model-mpp")
    layout, size, classes, multiple = (
        _inspect_onnx(path) if fmt == "onnx"
        else (bare.layout or "NCHW", None, len(bare.classes or ("class",)), 1))
    layout = bare.layout or layout
    multiple = bare.size_multiple or multiple
    names = bare.classes or tuple(f"class{i}" for i in range(classes))
    if len(names) != classes:
        raise ModelError(f"{path}: the model has {classes} output channels but --classes names "
                         f"{len(names)}: {', '.join(names)}")
    data = {
        "schema_version": 1, "name": path.stem.replace(" ", "_")[:64] or "model", "version": "unversioned",
        "task": "segmentation", "description": f"bare model file {path.name}",
        "weights": [{"format": fmt, "file": path.name, "sha256": sha256_of(path)}],
        "input": {"layout": layout, "channel_order": "RGB", "size": list(size) if size else None,
                  "size_multiple": multiple, "tile_size": bare.tile_size, "scale": bare.scale,
                  "mean": list(bare.mean), "std": list(bare.std)},
        "mpp": bare.mpp, "receptive_margin": bare.receptive_margin,
        "output": {"classes": [{"name": n} for n in names], "activation": bare.activation, "stride": 1},
        "license": "unknown",
    }
    return parse_card(data, path.parent / f"{path.name}.card.json")


def _inspect_onnx(path: Path) -> tuple[str, tuple[int, int] | None, int, int]:
    """Layout, fixed input size (or None), output channel count and size multiple of an ONNX
    model."""
    import onnx
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelError(f"{path}: onnxruntime cannot load the model: {exc}") from exc
    shape = session.get_inputs()[0].shape
    out = session.get_outputs()[0].shape
    if len(shape) != 4 or len(out) != 4:
        raise ModelError(f"{path}: expected a 4-D image input and output, got {shape} -> {out}")
    if shape[1] == 3:
        layout, (h, w), channels = "NCHW", shape[2:], out[1]
    elif shape[3] == 3:
        layout, (h, w), channels = "NHWC", shape[1:3], out[3]
    else:
        raise ModelError(f"{path}: cannot tell the channel axis of input shape {shape}; pass --layout")
    size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
    if not isinstance(channels, int):
        raise ModelError(f"{path}: the output channel count is not fixed in the graph ({out})")
    return layout, size, channels, onnx_size_multiple(onnx.load(str(path), load_external_data=False))


#: Operators that divide the spatial resolution by their ``strides``.
_DOWNSAMPLING_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger",
                               "QLinearConv"})


def onnx_size_multiple(model: Any) -> int:
    """The total spatial stride of the deepest feature map of an ONNX graph: input sizes must
    be multiples of it for the graph's pooling grid to be the same in every tile.

    Strides are followed from the input through the graph: strided convolutions and pooling
    multiply them, transposed convolutions divide them, and every other node takes the
    largest stride of its inputs (an upsampling whose factor the graph does not state keeps
    it, which can only overestimate the multiple: still exact, slightly more padding).
    """
    strides: dict[str, float] = {i.name: 1.0 for i in model.graph.input}
    deepest = 1.0
    for node in model.graph.node:
        known = [strides[name] for name in node.input if name in strides]
        if not known:
            continue
        stride = max(known)
        factor = next((max(a.ints) for a in node.attribute if a.name == "strides" and a.ints), 1)
        if node.op_type in _DOWNSAMPLING_OPS:
            stride *= factor
        elif node.op_type == "ConvTranspose":
            stride /= factor
        for name in node.output:
            strides[name] = stride
        deepest = max(deepest, stride)
    return max(1, round(deepest))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_weights(card: ModelCard, fmt: WeightsFormat) -> Path:
    """The path of ``card``'s weights in ``fmt``, after checking their sha256."""
    weights = card.weights_for(fmt)
    if not weights.path.is_file():
        raise ModelError(f"{card.path}: weights file {weights.path} not found")
    actual = sha256_of(weights.path)
    if actual != weights.sha256:
        raise ChecksumError(
            f"{weights.path}: sha256 mismatch: the card says {weights.sha256}, the file is {actual};"
            " refusing to load it"
        )
    return weights.path
