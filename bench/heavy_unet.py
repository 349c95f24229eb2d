#!/usr/bin/env python
"""Make a realistic heavy model for timing: a U-Net with a ResNet-18 encoder (random weights,
~14 M parameters), exported to ONNX and TorchScript with a wsi-infer card.

    python bench/heavy_unet.py --out /tmp/heavy        # then --model /tmp/heavy/card.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from wsi_infer.models import sha256_of


class Block(nn.Module):
    """ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResNet18UNet(nn.Module):
    """Encoder: ResNet-18 stages (64, 64, 128, 256, 512 channels); decoder: upsample + concat."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 64, 128, 256, 512]
        self.stages = nn.ModuleList(
            nn.Sequential(Block(widths[i], widths[i + 1], 1 if i == 0 else 2), Block(widths[i + 1], widths[i + 1], 1))
            for i in range(4))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i + 1] + widths[i], widths[i], 3, 1, 1), nn.BatchNorm2d(widths[i]), nn.ReLU())
            for i in reversed(range(4)))
        self.head = nn.Sequential(nn.Conv2d(64 + 3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        y = self.stem(x)
        skips.append(y)
        y = self.pool(y)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            if i < 3:
                skips.append(y)
        for up, skip in zip(self.ups, reversed(skips[1:]), strict=False):
            y = nn.functional.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], 1))
        y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([y, x], 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = ResNet18UNet(args.classes).eval()
    example = torch.zeros(1, 3, 256, 256)
    torch.onnx.export(model, example, args.out / "heavy.onnx", input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    torch.jit.save(torch.jit.trace(model, example), args.out / "heavy.pt")
    card = {
        "schema_version": 1, "name": "heavy-resnet18-unet", "version": "0.0.0", "task": "segmentation",
        "description": "Random-weight ResNet-18 U-Net for timing only.",
        "weights": [{"format": "onnx", "file": "heavy.onnx", "sha256": sha256_of(args.out / "heavy.onnx")},
                    {"format": "torchscript", "file": "heavy.pt", "sha256": sha256_of(args.out / "heavy.pt")}],
        "input": {"layout": "NCHW", "channel_order": "RGB", "size": None, "size_multiple": 32, "tile_size": 512,
                  "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "mpp": 0.5, "receptive_margin": 32,
        "output": {"classes": [{"name": f"class{i}"} for i in range(args.classes)], "activation": "softmax", "stride": 1},
        "license": "CC0-1.0",
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2))
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters -> {args.out / 'card.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
