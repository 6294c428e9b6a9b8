"""Gathers and scatters (Gather, GatherElements, GatherND, ScatterND, ScatterElements, Scatter), OneHot,
Compress, ReverseSequence. Negative indices count from the end, as in ONNX.

Scatters write into a copy of `data` (`index_put`, `scatter_reduce`), so the
gradient reaches both the data and the updates.
"""

from __future__ import annotations

import math

import torch

from .common import axis
from .registry import register

_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


@register("Gather")
def gather(node, x, idx):
    a = axis(node.attr("axis", 0), x.dim())
    idx = _wrap(idx, x.shape[a])
    flat = torch.index_select(x, a, idx.reshape(-1))
    return [flat.reshape((*x.shape[:a], *idx.shape, *x.shape[a + 1:]))]


@register("GatherElements")
def gather_elements(node, x, idx):
    a = axis(node.attr("axis", 0), x.dim())
    return [torch.gather(x, a, _wrap(idx, x.shape[a]))]


def _nd_index(shape: tuple, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An index tuple for the leading idx.shape[-1] axes of a tensor of `shape`."""
    idx = idx.long()
    dims = torch.tensor(shape[:idx.shape[-1]], dtype=torch.int64)
    idx = torch.where(idx < 0, idx + dims, idx)
    return tuple(idx.unbind(-1))


@register("GatherND")
def gather_nd(node, x, idx):
    b = node.attr("batch_dims", 0)
    batch = math.prod(x.shape[:b])
    xb = x.reshape(batch, *x.shape[b:])
    ib = idx.reshape(batch, -1, idx.shape[-1])
    rows = torch.arange(batch).unsqueeze(1).expand(batch, ib.shape[1])
    picked = xb[(rows, *_nd_index(xb.shape[1:], ib))]
    return [picked.reshape((*idx.shape[:-1], *x.shape[b + idx.shape[-1]:]))]


@register("ScatterND")
def scatter_nd(node, data, idx, updates):
    k = idx.shape[-1]
    rows = math.prod(data.shape[:k])
    flat = data.reshape(rows, *data.shape[k:])
    strides = torch.tensor([math.prod(data.shape[i + 1:k]) for i in range(k)], dtype=torch.int64)
    linear = (torch.stack(_nd_index(data.shape, idx), -1) * strides).sum(-1).reshape(-1)
    upd = updates.reshape(-1, *data.shape[k:])
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        out = flat.index_copy(0, linear, upd)
    else:
        index = linear.reshape(-1, *[1] * (upd.dim() - 1)).expand_as(upd)
        out = flat.scatter_reduce(0, index, upd, _SCATTER_REDUCE[reduction])
    return [out.reshape(data.shape)]


@register("ScatterElements", "Scatter")
def scatter_elements(node, data, idx, updates):
    a = axis(node.attr("axis", 0), data.dim())
    idx = _wrap(idx, data.shape[a])
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        return [torch.scatter(data, a, idx, updates)]
    return [torch.scatter_reduce(data, a, idx, updates, _SCATTER_REDUCE[reduction])]


@register("OneHot")
def one_hot(node, indices, depth, values):
    d = int(depth.reshape(-1)[0].item())
    a = axis(node.attr("axis", -1), indices.dim() + 1)
    idx = indices.to(torch.int64) if not indices.is_floating_point() else indices.trunc().to(torch.int64)
    idx = torch.where(idx < 0, idx + d, idx).unsqueeze(a)
    classes = torch.arange(d).reshape([d if i == a else 1 for i in range(indices.dim() + 1)])
    return [torch.where(idx == classes, values[1], values[0])]


@register("Compress")
def compress(node, x, condition):
    a = node.attr("axis")
    if a is None:
        x, a = x.reshape(-1), 0
    keep = torch.nonzero(condition.bool().reshape(-1)).reshape(-1)
    return [torch.index_select(x, axis(a, x.dim()), keep)]


@register("ReverseSequence")
def reverse_sequence(node, x, lengths):
    t_axis, b_axis = node.attr("time_axis", 0), node.attr("batch_axis", 1)
    steps = torch.arange(x.shape[t_axis]).unsqueeze(1)
    lens = lengths.long().unsqueeze(0)
    source = torch.where(steps < lens, lens - 1 - steps, steps)  # [time, batch]
    if t_axis > b_axis:
        source = source.t()
    shape = [x.shape[i] if i in (t_axis, b_axis) else 1 for i in range(x.dim())]
    return [torch.gather(x, t_axis, source.reshape(shape).expand(x.shape))]


@register("Unique")
def unique(node, x):
    """Unique values (sorted, or in order of first occurrence), first indices, inverse indices, counts."""
    a = node.attr("axis")
    flat = x.reshape(-1) if a is None else x
    dim = 0 if a is None else axis(a, x.dim())
    y, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True, dim=dim)
    positions = torch.arange(flat.shape[dim])
    first = torch.full((y.shape[dim],), flat.shape[dim], dtype=torch.int64).scatter_reduce(
        0, inverse, positions, "amin")
    if not node.attr("sorted", 1):
        order = torch.argsort(first)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order)))
        y, first, inverse, counts = flat.index_select(dim, first[order]), first[order], rank[inverse], counts[order]
    return [y, first, inverse.reshape(-1), counts][:max(1, node.n_outputs)]
