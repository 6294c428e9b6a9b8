"""ResNet-18- and MobileNetV2-style conv nets in plain torch, exported to ONNX (for benchmarks).

Random weights (seeded): these models measure speed, not accuracy. BatchNorm
is folded into the convolutions by the exporter's constant folding.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6() if act else nn.Identity())


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, 1, act=False))
        self.skip = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(_conv_bn(cin, hidden, 1), _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  _conv_bn(hidden, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def resnet18(classes: int = 1000) -> nn.Module:
    blocks, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        blocks += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


def mobilenet_v2(classes: int = 1000) -> nn.Module:
    spec = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    blocks, cin = [], 32
    for expand, cout, repeat, stride in spec:
        for i in range(repeat):
            blocks.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(_conv_bn(3, 32, 3, 2), *blocks, _conv_bn(cin, 1280, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))


def export(model: nn.Module, path: Path, size: int = 224, seed: int = 0) -> Path:
    """Export `model` (seeded random weights, eval mode) to ONNX opset 17, dynamic batch."""
    torch.manual_seed(seed)
    for m in model.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    path.write_bytes(buf.getvalue())
    return path
