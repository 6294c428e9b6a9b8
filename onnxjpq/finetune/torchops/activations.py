"""Activations, Clip, and Softmax/LogSoftmax (with the opset < 13 flattening to 2-D)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import axis
from .registry import register

_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _activation(op_type: str, fn):
    """Register `fn(x, node)`, an activation with attributes."""
    register(op_type)(lambda node, x: [fn(x, node)])


_activation("Relu", lambda x, n: torch.relu(x))
_activation("LeakyRelu", lambda x, n: F.leaky_relu(x, n.attr("alpha", 0.01)))
_activation("Elu", lambda x, n: F.elu(x, n.attr("alpha", 1.0)))
_activation("Celu", lambda x, n: F.celu(x, n.attr("alpha", 1.0)))
_activation("Selu", lambda x, n: n.attr("gamma", _SELU_GAMMA) * torch.where(
    x > 0, x, n.attr("alpha", _SELU_ALPHA) * torch.expm1(x)))
_activation("ThresholdedRelu", lambda x, n: torch.where(x > n.attr("alpha", 1.0), x, torch.zeros_like(x)))
_activation("HardSigmoid", lambda x, n: torch.clamp(n.attr("alpha", 0.2) * x + n.attr("beta", 0.5), 0, 1))
_activation("HardSwish", lambda x, n: F.hardswish(x))
_activation("Gelu", lambda x, n: F.gelu(x, approximate=n.attr("approximate", "none")))
_activation("Softplus", lambda x, n: F.softplus(x))
_activation("Softsign", lambda x, n: F.softsign(x))
_activation("Mish", lambda x, n: F.mish(x))
_activation("Swish", lambda x, n: x * torch.sigmoid(n.attr("alpha", 1.0) * x))
_activation("Shrink", lambda x, n: _shrink(x, n.attr("lambd", 0.5), n.attr("bias", 0.0)))


def _shrink(x, lambd: float, bias: float):
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)).to(x.dtype)


@register("SwiGLU")
def swiglu(node, a, b):
    return [a * torch.sigmoid(node.attr("alpha", 1.0) * a) * b]


@register("PRelu")
def prelu(node, x, slope):
    return [torch.where(x < 0, slope * x, x)]


@register("Clip")
def clip(node, x, lo=None, hi=None):
    if node.opset < 11:
        lo, hi = node.attr("min", -math.inf), node.attr("max", math.inf)
        return [torch.clamp(x, lo, hi)]
    if lo is not None and hi is not None:
        return [torch.minimum(torch.maximum(x, lo), hi)]
    if lo is not None:
        return [torch.maximum(x, lo)]
    return [torch.minimum(x, hi) if hi is not None else x]


def _softmax_like(fn):
    def run(node, x):
        if node.opset >= 13:
            return [fn(x, axis(node.attr("axis", -1), x.dim()))]
        a = axis(node.attr("axis", 1), x.dim())
        flat = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        return [fn(flat, 1).reshape(x.shape)]
    return run


register("Softmax")(_softmax_like(torch.softmax))
register("LogSoftmax")(_softmax_like(torch.log_softmax))
