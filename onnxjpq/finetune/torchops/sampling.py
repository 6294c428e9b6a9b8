"""GridSample and AffineGrid on torch's own kernels (2-D and 3-D spatial; bicubic in 2-D only).

ONNX's opset 20 names the modes linear/cubic; opset 16 named them
bilinear/bicubic; both are accepted.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import ints
from .registry import register

_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
          "bicubic": "bicubic"}


def _check(node) -> str | None:
    mode = node.attr("mode", "linear" if node.opset >= 20 else "bilinear")
    if mode not in _MODES:
        return f"GridSample with mode {mode!r}"
    padding = node.attr("padding_mode", "zeros")
    return None if padding in ("zeros", "border", "reflection") else f"GridSample with padding_mode {padding!r}"


@register("GridSample", check=_check)
def grid_sample(node, x, grid):
    mode = _MODES[node.attr("mode", "linear" if node.opset >= 20 else "bilinear")]
    return [F.grid_sample(x, grid, mode=mode, padding_mode=node.attr("padding_mode", "zeros"),
                          align_corners=bool(node.attr("align_corners", 0)))]


@register("AffineGrid")
def affine_grid(node, theta, size):
    return [F.affine_grid(theta, ints(size), align_corners=bool(node.attr("align_corners", 0)))]
