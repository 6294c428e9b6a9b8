"""Shapes and layout: Shape, Size, Range, ConstantOfShape, Expand, Tile, Reshape, Flatten, (Un)Squeeze,
Transpose, Concat, Split, Slice, DepthToSpace, SpaceToDepth, Trilu, EyeLike, NonZero, Identity.

Inputs that ONNX made of attributes in newer opsets (Squeeze's axes, Split's
split, Slice's starts and ends) are read from whichever the node has.
"""

from __future__ import annotations

import math

import torch

from .common import axis, ints
from .dtypes import TORCH_DTYPES, to_torch
from .registry import register

register("Identity")(lambda node, x: [x])


@register("Shape")
def shape(node, x):
    dims = list(x.shape)
    start, end = node.attr("start", 0), node.attr("end", len(dims))
    return [torch.tensor(dims[slice(start, end)], dtype=torch.int64)]


register("Size")(lambda node, x: [torch.tensor(x.numel(), dtype=torch.int64)])


@register("Range")
def range_(node, start, limit, delta):
    count = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    return [start + torch.arange(count, dtype=start.dtype) * delta]


@register("ConstantOfShape")
def constant_of_shape(node, dims):
    value = node.attr("value")
    fill = to_torch(value).reshape(()) if value is not None else torch.tensor(0.0)
    return [torch.full(ints(dims), fill.item(), dtype=fill.dtype)]


register("Expand")(lambda node, x, dims: [x.expand(torch.broadcast_shapes(x.shape, tuple(ints(dims))))])
register("Tile")(lambda node, x, repeats: [x.repeat(ints(repeats))])
register("Transpose")(lambda node, x: [x.permute(*node.ints("perm", list(reversed(range(x.dim())))))])
register("Concat")(lambda node, *xs: [torch.cat(xs, dim=axis(node.attr("axis"), xs[0].dim()))])


@register("Reshape")
def reshape(node, x, dims=None):
    target = ints(dims) if dims is not None else node.ints("shape")
    if not node.attr("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [x.reshape(target)]


@register("Flatten")
def flatten(node, x):
    a = axis(node.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))]


def _axes_of(node, axes) -> list[int] | None:
    return ints(axes) if axes is not None else node.ints("axes")


@register("Squeeze")
def squeeze(node, x, axes=None):
    given = _axes_of(node, axes)
    dims = [axis(a, x.dim()) for a in given] if given else [i for i, s in enumerate(x.shape) if s == 1]
    return [x.reshape([s for i, s in enumerate(x.shape) if i not in dims])]


@register("Unsqueeze")
def unsqueeze(node, x, axes=None):
    raw = _axes_of(node, axes)
    rank = x.dim() + len(raw)
    for a in sorted(axis(a, rank) for a in raw):
        x = x.unsqueeze(a)
    return [x]


@register("Split")
def split(node, x, sizes=None):
    a = axis(node.attr("axis", 0), x.dim())
    given = ints(sizes) if sizes is not None else node.ints("split")
    if given:
        return list(torch.split(x, given, dim=a))
    parts = node.attr("num_outputs", node.n_outputs)
    return list(torch.split(x, math.ceil(x.shape[a] / parts), dim=a))


def _slice_indices(start: int, end: int, step: int, dim: int) -> range:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, -1), dim - 1), min(max(end, -1), dim - 1), step)


@register("Slice")
def slice_(node, x, starts=None, ends=None, axes=None, steps=None):
    if node.opset < 10:
        starts, ends, axes = node.ints("starts"), node.ints("ends"), node.ints("axes")
    else:
        starts, ends, axes, steps = ints(starts), ints(ends), ints(axes), ints(steps)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    flips = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = axis(a, x.dim())
        r = _slice_indices(s, e, st, x.shape[a])
        if st > 0:
            index[a] = slice(r.start, max(r.stop, r.start), st)
        else:
            flips.append((a, torch.tensor(list(r), dtype=torch.int64)))
    y = x[tuple(index)]
    for a, idx in flips:
        y = y.index_select(a, idx)
    return [y]


@register("DepthToSpace")
def depth_to_space(node, x):
    b = node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@register("SpaceToDepth")
def space_to_depth(node, x):
    b = node.attr("blocksize")
    n, c, h, w = x.shape
    order = (0, 1, 3, 5, 2, 4) if node.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).permute(*order)
    return [y.reshape(n, c * b * b, h // b, w // b)]


@register("Trilu")
def trilu(node, x, k=None):
    shift = int(k.item()) if k is not None else 0
    return [torch.triu(x, shift) if node.attr("upper", 1) else torch.tril(x, shift)]


@register("EyeLike")
def eye_like(node, x):
    rows = torch.arange(x.shape[0]).unsqueeze(1)
    cols = torch.arange(x.shape[1]).unsqueeze(0)
    dtype = TORCH_DTYPES[node.attr("dtype")] if node.attr("dtype") is not None else x.dtype
    return [(cols - rows == node.attr("k", 0)).to(dtype)]


register("NonZero")(lambda node, x: [torch.nonzero(x).t().contiguous()])
