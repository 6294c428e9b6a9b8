"""Helpers the op families share: shape arguments, axes, ONNX pads in torch's order."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ints(t: torch.Tensor | None) -> list[int] | None:
    """A shape-like input as Python ints (None stays None)."""
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def torch_pads(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX's per-axis begins and ends as F.pad's list (last axis first)."""
    out = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out


def pad_begin_end(x: torch.Tensor, begins: list[int], ends: list[int], value: float = 0.0) -> torch.Tensor:
    """Pad (or crop, where negative) the trailing len(begins) axes of `x`."""
    if not any(begins) and not any(ends):
        return x
    return F.pad(x, torch_pads(begins, ends), value=value)


def auto_pads(node, in_sizes: list[int], kernel: list[int], strides: list[int],
              dilations: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end pads of a Conv or pool from `pads` or `auto_pad` (SAME_UPPER puts the odd one at the end)."""
    rank = len(in_sizes)
    mode = node.attr("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
            small, large = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else large)
            ends.append(large if mode == "SAME_UPPER" else small)
        return begins, ends
    if mode == "VALID":
        return [0] * rank, [0] * rank
    pads = node.ints("pads", [0] * (2 * rank))
    return pads[:rank], pads[rank:]


def check_auto_pad(node) -> str | None:
    mode = node.attr("auto_pad", "NOTSET")
    if mode in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return None
    return f"{node.op_type} with auto_pad {mode!r}"


def broadcast_all(*xs: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.broadcast_tensors(*xs))
