"""Pad in every mode (constant, reflect, edge, wrap) and opset form: `paddings`/`pads` and `value`
attributes before opset 11, then inputs (pads, constant_value, and axes from opset 18).

Negative pads crop. Non-constant modes gather each padded axis through an index
map, so any rank works and the gradient flows back to the source elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import axis, ints, torch_pads
from .registry import register

_MODES = ("constant", "reflect", "edge", "wrap")


def _source_index(n: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """For each position of a padded axis of length n + begin + end, the source position in [0, n)."""
    i = torch.arange(-begin, n + end)
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i.remainder(n)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _pad_axis(x: torch.Tensor, a: int, begin: int, end: int, mode: str) -> torch.Tensor:
    if begin < 0:
        x, begin = x.narrow(a, -begin, x.shape[a] + begin), 0
    if end < 0:
        x, end = x.narrow(a, 0, x.shape[a] + end), 0
    if begin == 0 and end == 0:
        return x
    return x.index_select(a, _source_index(x.shape[a], begin, end, mode))


def _check(node) -> str | None:
    mode = node.attr("mode", "constant")
    return None if mode in _MODES else f"Pad with mode {mode!r}"


@register("Pad", check=_check)
def pad(node, x, pads=None, value=None, axes=None):
    rank = x.dim()
    if node.opset < 11:
        amounts = node.ints("pads") or node.ints("paddings")
        fill = node.attr("value", 0.0)
    else:
        amounts = ints(pads)
        fill = value.reshape(-1)[0].item() if value is not None and value.numel() else 0
    chosen = [axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(chosen):
        begins[a], ends[a] = amounts[i], amounts[i + len(chosen)]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        fill = fill if x.is_floating_point() else int(fill)
        return [F.pad(x, torch_pads(begins, ends), value=fill)]
    for a in range(rank):
        x = _pad_axis(x, a, begins[a], ends[a], mode)
    return [x]


@register("CenterCropPad")
def center_crop_pad(node, x, shape):
    """Crop or zero-pad each chosen axis to its target length, centred (the odd element goes to the end)."""
    axes = [axis(a, x.dim()) for a in node.ints("axes", list(range(x.dim())))]
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for a, target in zip(axes, ints(shape)):
        d = target - x.shape[a]
        sign = 1 if d > 0 else -1
        begins[a], ends[a] = sign * (abs(d) // 2), sign * (abs(d) - abs(d) // 2)
    return [F.pad(x, torch_pads(begins, ends))]
