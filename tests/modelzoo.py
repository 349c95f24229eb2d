"""Small models with known behaviour, written as real ONNX / TorchScript files with cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wsi_infer.models import sha256_of


def write_card(folder: Path, name: str, weights: dict[str, str], *, mpp: float, margin: int,
               classes: list[str], activation: str = "none", layout: str = "NCHW",
               size: list[int] | None = None, tile_size: int = 256, scale: float = 1 / 255,
               mean: float = 0.0, std: float = 1.0, size_multiple: int = 1) -> Path:
    card = {
        "schema_version": 1, "name": name, "version": "0.0.1", "task": "segmentation",
        "weights": [{"format": fmt, "file": file, "sha256": sha256_of(folder / file)}
                    for fmt, file in weights.items()],
        "input": {"layout": layout, "channel_order": "RGB", "size": size, "size_multiple": size_multiple,
                  "tile_size": tile_size, "scale": scale, "mean": [mean] * 3, "std": [std] * 3},
        "mpp": mpp, "receptive_margin": margin,
        "output": {"classes": [{"name": c} for c in classes], "activation": activation, "stride": 1},
        "license": "CC0-1.0",
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card, indent=2))
    return path


def red_channel_onnx(path: Path, *, layout: str = "NCHW", size: int | None = None) -> Path:
    """Output = the input's first (red) channel: probability = red / 255 with scale 1/255."""
    dim = size if size else None
    if layout == "NCHW":
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, dim or "H", dim or "W"])
        y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, dim or "H", dim or "W"])
        axis = 1
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", dim or "H", dim or "W", 3])
        y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", dim or "H", dim or "W", 1])
        axis = 3
    inits = [numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([1], np.int64), "ends"),
             numpy_helper.from_array(np.array([axis], np.int64), "axes")]
    node = helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["output"])
    graph = helper.make_graph([node], "red", [x], [y], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def conv_onnx(path: Path, *, kernel: int = 7, classes: int = 2, size: int | None = None,
              seed: int = 0) -> Path:
    """A fixed random ``kernel × kernel`` convolution (zero padding): shift-equivariant with a
    receptive margin of ``kernel // 2``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (classes, 3, kernel, kernel)).astype(np.float32)
    b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    dims = [size, size] if size else ["H", "W"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, *dims])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, *dims])
    pad = kernel // 2
    node = helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[pad] * 4)
    graph = helper.make_graph([node], "conv", [x], [y],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def unet_onnx(path: Path, *, depth: int = 3, width: int = 4, classes: int = 2, seed: int = 0) -> Path:
    """A small random U-Net: per level a 3×3 convolution (zero padding) and ReLU, then 2×2 max
    pooling; transposed 2×2 convolutions back up with skip connections.  Its size multiple is
    ``2**depth``; its receptive margin is below ``6 * 2**depth`` px."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array(
            rng.normal(0, (2 / fan_in) ** 0.5, shape).astype(np.float32), name))
        return name

    def conv(name: str, x: str, cin: int, cout: int, relu: bool = True) -> str:
        w, b = weight(f"{name}.w", (cout, cin, 3, 3)), weight(f"{name}.b", (cout,))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}.y"], pads=[1] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
        return f"{name}.r"

    x, cin, skips = "input", 3, []
    for level in range(depth):
        x = conv(f"enc{level}", x, cin, width)
        skips.append(x)
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{level}"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x, cin = f"pool{level}", width
    x = conv("bottom", x, width, width)
    for level in reversed(range(depth)):
        w = weight(f"up{level}.w", (width, width, 2, 2))
        nodes.append(helper.make_node("ConvTranspose", [x, w], [f"up{level}"], strides=[2, 2]))
        nodes.append(helper.make_node("Concat", [f"up{level}", skips[level]], [f"cat{level}"], axis=1))
        x = conv(f"dec{level}", f"cat{level}", 2 * width, width)
    logits = conv("head", x, width, classes, relu=False)
    nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    graph = helper.make_graph(
        nodes, "unet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
