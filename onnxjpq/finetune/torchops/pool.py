"""Pooling: MaxPool (dilations, ceil_mode, auto_pad, the Indices output), AveragePool (count_include_pad),
LpPool, and the Global forms.

The general path pads the input, cuts it into windows with `Tensor.unfold`
(one spatial axis at a time, dilation by striding inside the window) and
reduces them; averages divide by a window count made the same way from a mask
(the pads count with count_include_pad, the ceil_mode overhang never does).
torch's own kernels are used where they give the same windows (symmetric pads
of at most half the kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import check_auto_pad, pad_begin_end
from .registry import register


@dataclass(frozen=True)
class Geometry:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begins: list[int]  # pads before each spatial axis
    ends: list[int]  # declared pads after it (the ceil_mode overhang comes on top)
    out: list[int]  # output sizes

    def symmetric(self) -> bool:
        return self.begins == self.ends and all(2 * b <= k for b, k in zip(self.begins, self.kernel))


def geometry(node, x) -> Geometry:
    """Kernel, strides, dilations, pads and output sizes, as onnx's reference computes them."""
    rank, sizes = x.dim() - 2, list(x.shape[2:])
    kernel = node.ints("kernel_shape")
    strides, dil = node.ints("strides", [1] * rank), node.ints("dilations", [1] * rank)
    mode, ceil = node.attr("auto_pad", "NOTSET"), node.attr("ceil_mode", 0)
    if mode == "VALID":
        out = [(n - ((k - 1) * d + 1)) // s + 1 for n, k, s, d in zip(sizes, kernel, strides, dil)]
        return Geometry(kernel, strides, dil, [0] * rank, [0] * rank, out)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        out = [(n - 1) // s + 1 for n, s in zip(sizes, strides)]
        totals = [max(0, (o - 1) * s + (k - 1) * d + 1 - n) for o, s, k, d, n in zip(out, strides, kernel, dil, sizes)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        begins, ends = (small, large) if mode == "SAME_UPPER" else (large, small)
        return Geometry(kernel, strides, dil, begins, ends, out)
    pads = node.ints("pads", [0] * (2 * rank))
    out = []
    for i, (n, k, s, d) in enumerate(zip(sizes, kernel, strides, dil)):
        span = n + pads[i] + pads[i + rank] - d * (k - 1) - 1
        size = (-(-span // s) if ceil else span // s) + 1
        if ceil and (size - 1) * s >= n + pads[i]:
            size -= 1  # the last window must start inside the input or its left pad
        out.append(size)
    return Geometry(kernel, strides, dil, pads[:rank], pads[rank:], out)


def windows(x, g: Geometry, fill: float, begins: list[int] | None = None) -> torch.Tensor:
    """x's pooling windows, shape [N, C, *out, *kernel], padded with `fill`."""
    begins = g.begins if begins is None else begins
    lengths = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(g.out, g.strides, g.kernel, g.dilations)]
    ends = [length - n - b for length, n, b in zip(lengths, x.shape[2:], begins)]
    x = pad_begin_end(x, begins, ends, fill)
    for i, (k, s, d) in enumerate(zip(g.kernel, g.strides, g.dilations)):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)
        if d > 1:
            x = x[..., ::d]
    return x


def _window_dims(g: Geometry) -> list[int]:
    rank = len(g.kernel)
    return list(range(2 + rank, 2 + 2 * rank))


def _fast(fn, x, g: Geometry, *args):
    """torch's kernel `fn` when it applies and gives ONNX's output sizes, else None."""
    rank = len(g.kernel)
    if rank > 3 or not x.is_floating_point() or not g.symmetric():
        return None
    y = fn[rank - 1](x, g.kernel, g.strides, g.begins, *args)
    return y if list(y.shape[2:]) == g.out else None


@register("MaxPool", check=check_auto_pad)
def max_pool(node, x):
    g = geometry(node, x)
    if not node.wants(1):
        y = _fast((F.max_pool1d, F.max_pool2d, F.max_pool3d), x, g, g.dilations, bool(node.attr("ceil_mode", 0)))
        if y is not None:
            return [y]
    lowest = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
    win = windows(x, g, lowest)
    y = win.amax(dim=_window_dims(g))
    return [y, _argmax_indices(node, x, win, g)] if node.wants(1) else [y]


def _argmax_indices(node, x, win, g: Geometry) -> torch.Tensor:
    """ONNX's Indices: flat positions in x (spatial axes in row-major, or column-major with storage_order)."""
    rank, spatial = len(g.kernel), list(x.shape[2:])
    axes = list(reversed(range(rank))) if not node.attr("storage_order", 0) else list(range(rank))
    flat, step = torch.zeros(spatial, dtype=torch.int64), 1
    for i in axes:
        flat = flat + torch.arange(spatial[i]).reshape([spatial[i] if j == i else 1 for j in range(rank)]) * step
        step *= spatial[i]
    planes = torch.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *[1] * rank) * step
    positions = windows((flat + planes).to(torch.float64), g, -1.0)
    best = win.flatten(2 + rank).argmax(-1, keepdim=True)
    return positions.flatten(2 + rank).gather(-1, best).squeeze(-1).to(torch.int64)


@register("AveragePool", check=check_auto_pad)
def average_pool(node, x):
    g = geometry(node, x)
    include = bool(node.attr("count_include_pad", 0))
    if all(d == 1 for d in g.dilations):
        y = _fast((F.avg_pool1d, F.avg_pool2d, F.avg_pool3d), x, g, bool(node.attr("ceil_mode", 0)), include)
        if y is not None:
            return [y]
    total = windows(x, g, 0.0).sum(dim=_window_dims(g))
    ones = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype)
    if include:  # the pads count, the ceil_mode overhang beyond them does not
        ones = pad_begin_end(ones, g.begins, g.ends, 1.0)
    count = windows(ones, g, 0.0, [0] * len(g.kernel) if include else None).sum(dim=_window_dims(g))
    return [total / count]


@register("LpPool", check=check_auto_pad)
def lp_pool(node, x):
    g = geometry(node, x)
    p = node.attr("p", 2)
    return [windows(x, g, 0.0).abs().pow(p).sum(dim=_window_dims(g)).pow(1.0 / p)]


def _spatial(x) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


register("GlobalAveragePool")(lambda node, x: [x.mean(dim=_spatial(x), keepdim=True)])
register("GlobalMaxPool")(lambda node, x: [x.amax(dim=_spatial(x), keepdim=True)])
register("GlobalLpPool")(lambda node, x: [
    x.abs().pow(node.attr("p", 2)).sum(dim=_spatial(x), keepdim=True).pow(1.0 / node.attr("p", 2))])


@register("MaxUnpool")
def max_unpool(node, x, indices, output_shape=None):
    """Scatter x to MaxPool's flat Indices in a zero tensor of the inferred (or given) shape."""
    rank = x.dim() - 2
    kernel, strides = node.ints("kernel_shape"), node.ints("strides", [1] * rank)
    pads = node.ints("pads", [0] * (2 * rank))
    inferred = [(n - 1) * s - (pads[i] + pads[i + rank]) + k
                for i, (n, s, k) in enumerate(zip(x.shape[2:], strides, kernel))]
    flat = torch.zeros(x.shape[0] * x.shape[1] * math.prod(inferred), dtype=x.dtype)
    y = flat.index_put((indices.reshape(-1).long(),), x.reshape(-1)).reshape(*x.shape[:2], *inferred)
    if output_shape is None:
        return [y]
    target = [int(v) for v in output_shape.tolist()]
    return [pad_begin_end(y, [0] * rank, [t - n for t, n in zip(target[2:], inferred)])]
