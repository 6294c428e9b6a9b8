"""Normalisations: Batch (inference, and training_mode's batch statistics), Instance, Layer (with its Mean and
InvStdDev outputs), Group (per-group scale before opset 21, per-channel after), RMS, Lp, MeanVariance, LRN;
and Dropout, which is the identity outside training_mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import axis
from .registry import register


def _channel(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.reshape(1, -1, *[1] * (rank - 2))


@register("BatchNormalization")
def batch_norm(node, x, scale, bias, mean, var):
    eps = node.attr("epsilon", 1e-5)
    training = node.opset >= 14 and node.attr("training_mode", 0)
    if not training:
        inv = scale / torch.sqrt(var + eps)
        return [(x - _channel(mean, x.dim())) * _channel(inv, x.dim()) + _channel(bias, x.dim())]
    dims = [0, *range(2, x.dim())]
    batch_mean, batch_var = x.mean(dims), x.var(dims, unbiased=False)
    y = (x - _channel(batch_mean, x.dim())) * _channel(scale / torch.sqrt(batch_var + eps), x.dim())
    momentum = node.attr("momentum", 0.9)
    return [y + _channel(bias, x.dim()), mean * momentum + batch_mean * (1 - momentum),
            var * momentum + batch_var * (1 - momentum)]


@register("InstanceNormalization")
def instance_norm(node, x, scale, bias):
    return [F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))]


def _stash(node, x: torch.Tensor) -> torch.Tensor:
    """x in the stash type (float32 by default) for the statistics."""
    return x.to(torch.float32) if node.attr("stash_type", 1) == 1 and x.element_size() < 4 else x


@register("LayerNormalization")
def layer_norm(node, x, scale, bias=None):
    a = axis(node.attr("axis", -1), x.dim())
    eps = node.attr("epsilon", 1e-5)
    dims = list(range(a, x.dim()))
    if not node.wants(1) and not node.wants(2) and tuple(scale.shape) == tuple(x.shape[a:]) and (
            bias is None or bias.shape == scale.shape):
        return [F.layer_norm(x, x.shape[a:], scale, bias, eps)]
    work = _stash(node, x)
    mean = work.mean(dims, keepdim=True)
    inv = torch.rsqrt(((work - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = ((work - mean) * inv).to(x.dtype) * scale
    y = y + bias if bias is not None else y
    return [y, mean, inv][:max(1, node.n_outputs)]


@register("GroupNormalization")
def group_norm(node, x, scale, bias):
    groups = node.attr("num_groups")
    channels = x.shape[1]
    if node.opset < 21:  # scale and bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    work = _stash(node, x)
    y = F.group_norm(work, groups, eps=node.attr("epsilon", 1e-5)).to(x.dtype)
    return [y * _channel(scale, x.dim()) + _channel(bias, x.dim())]


@register("RMSNormalization")
def rms_norm(node, x, scale):
    a = axis(node.attr("axis", -1), x.dim())
    work = _stash(node, x)
    inv = torch.rsqrt((work * work).mean(list(range(a, x.dim())), keepdim=True) + node.attr("epsilon", 1e-5))
    return [(work * inv).to(x.dtype) * scale]


@register("LpNormalization")
def lp_norm(node, x):
    a = axis(node.attr("axis", -1), x.dim())
    p = node.attr("p", 2)
    norm = x.abs().sum(a, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(a, keepdim=True))
    return [torch.where(norm == 0, torch.zeros_like(x), x / norm)]


@register("MeanVarianceNormalization")
def mean_variance_norm(node, x):
    dims = node.ints("axes", [0, 2, 3])
    mean = x.mean(dims, keepdim=True)
    std = torch.sqrt((x * x).mean(dims, keepdim=True) - mean * mean)
    return [(x - mean) / (std + 1e-9)]


@register("LRN")
def lrn(node, x):
    size = node.attr("size")
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    squares = F.pad(x * x, [0, 0] * (x.dim() - 2) + [before, after])
    window = squares.unfold(1, size, 1).sum(-1)
    scale = node.attr("bias", 1.0) + node.attr("alpha", 1e-4) / size * window
    return [x / scale ** node.attr("beta", 0.75)]


@register("Dropout")
def dropout(node, x, ratio=None, training=None):
    p = float(ratio.item()) if ratio is not None else node.attr("ratio", 0.5)
    train = bool(training.item()) if training is not None else False
    if not train or p == 0:
        y, mask = x, torch.ones_like(x, dtype=torch.bool)
    else:
        mask = torch.rand_like(x, dtype=torch.float32) >= p
        y = x * mask / (1 - p)
    return [y, mask][:max(1, node.n_outputs)]
