"""Reductions (Reduce*, with axes as an attribute or, in newer opsets, an input), ArgMax/ArgMin, TopK, CumSum, CumProd.

An empty `axes` reduces every axis, unless `noop_with_empty_axes` is set: then
nothing is reduced and only the elementwise part applies (x*x for
ReduceSumSquare, |x| for ReduceL1 ...), as in onnx's reference. Results keep
the input's dtype.
"""

from __future__ import annotations

import torch

from .common import axis, ints
from .registry import register


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep, dtype=x.dtype)
    return x


def _empty_fill(dtype: torch.dtype, largest: bool):
    """The max (or min) of no values: the type's lowest (highest) value."""
    if dtype == torch.bool:
        return not largest
    if dtype.is_floating_point:
        return -torch.inf if largest else torch.inf
    return torch.iinfo(dtype).min if largest else torch.iinfo(dtype).max


def _extreme(largest: bool):
    def run(x, dims, keep):
        if any(x.shape[d] == 0 for d in dims):
            shape = [1 if d in dims else s for d, s in enumerate(x.shape) if keep or d not in dims]
            return torch.full(shape, _empty_fill(x.dtype, largest), dtype=x.dtype)
        work = x.to(torch.uint8) if x.dtype == torch.bool else x
        y = torch.amax(work, dims, keepdim=keep) if largest else torch.amin(work, dims, keepdim=keep)
        return y.to(x.dtype)
    return run


def _sum(x, dims, keep):
    return torch.sum(x, dims, keepdim=keep, dtype=x.dtype)


# op type -> (elementwise part before, reduction, elementwise part after)
_REDUCTIONS = {
    "ReduceSum": (None, _sum, None),
    "ReduceSumSquare": (lambda x: x * x, _sum, None),
    "ReduceL1": (torch.abs, _sum, None),
    "ReduceL2": (lambda x: x * x, _sum, torch.sqrt),
    "ReduceLogSum": (None, _sum, torch.log),
    "ReduceLogSumExp": (None, lambda x, d, k: torch.logsumexp(x, d, keepdim=k), None),
    "ReduceMean": (None, lambda x, d, k: torch.mean(x, d, keepdim=k), None),
    "ReduceMax": (None, _extreme(True), None),
    "ReduceMin": (None, _extreme(False), None),
    "ReduceProd": (None, _prod, None),
}


def _reduce_dims(node, x, axes) -> list[int]:
    given = ints(axes) if axes is not None else node.ints("axes")
    if not given:
        return [] if node.attr("noop_with_empty_axes", 0) else list(range(x.dim()))
    return sorted({axis(a, x.dim()) for a in given})


def _reduction(before, reduce, after):
    def run(node, x, axes=None):
        dims = _reduce_dims(node, x, axes)
        keep = bool(node.attr("keepdims", 1))
        y = before(x) if before else x
        if dims:
            y = reduce(y, dims, keep)
        y = after(y) if after else y
        return [y.to(x.dtype)]
    return run


for _op_type, _parts in _REDUCTIONS.items():
    register(_op_type)(_reduction(*_parts))


def _arg(largest: bool):
    def run(node, x):
        a = axis(node.attr("axis", 0), x.dim())
        keep = bool(node.attr("keepdims", 1))
        fn = torch.argmax if largest else torch.argmin
        if node.attr("select_last_index", 0):
            return [x.shape[a] - 1 - fn(x.flip(a), a, keepdim=keep)]
        return [fn(x, a, keepdim=keep)]
    return run


register("ArgMax")(_arg(True))
register("ArgMin")(_arg(False))


@register("TopK")
def top_k(node, x, k=None):
    count = int(k.item()) if k is not None else node.attr("k")
    a = axis(node.attr("axis", -1), x.dim())
    values, indices = torch.sort(x, dim=a, descending=bool(node.attr("largest", 1)), stable=True)
    return [values.narrow(a, 0, count), indices.narrow(a, 0, count)]


def _cumulative(fn, identity: int):
    def run(node, x, axis_input):
        a = axis(int(axis_input.item()), x.dim())
        reverse = bool(node.attr("reverse", 0))
        y = x.flip(a) if reverse else x
        if node.attr("exclusive", 0):
            pad = torch.full_like(y.narrow(a, 0, 1), identity)
            y = torch.cat([pad, y.narrow(a, 0, y.shape[a] - 1)], dim=a)
        y = fn(y, dim=a).to(x.dtype)
        return [y.flip(a) if reverse else y]
    return run


register("CumSum")(_cumulative(torch.cumsum, 0))
register("CumProd")(_cumulative(torch.cumprod, 1))
