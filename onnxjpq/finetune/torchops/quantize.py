"""QuantizeLinear and DequantizeLinear: per-tensor, per-axis and blocked scales; integer and float8 codes.

Codes of 2 and 4 bits are held as in `dtypes` (values in bytes viewed as
torch.int4 and its kin). The quantized output is an integer (or float8) tensor, so no gradient flows
through QuantizeLinear; DequantizeLinear is differentiable in its scale.
"""

from __future__ import annotations

import torch
from onnx import TensorProto

from .cast import cast_to
from .common import axis as norm_axis
from .dtypes import NARROW_INTS, TORCH_DTYPES, int_range, narrowed, unsupported_type, widened
from .registry import register

_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz)


def _spread(value: torch.Tensor, shape, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point made broadcastable to `shape` (per tensor, per axis, or per block along axis)."""
    if value.dim() == 0 or value.numel() == 1:
        return value.reshape(())
    axis = norm_axis(axis, len(shape))
    if not block:
        return value.reshape([value.numel() if i == axis else 1 for i in range(len(shape))])
    return value.repeat_interleave(block, dim=axis).narrow(axis, 0, shape[axis])


def _check_output(node) -> str | None:
    dtype = node.attr("output_dtype")
    return unsupported_type(dtype) if dtype else None


@register("QuantizeLinear", check=_check_output, narrow=True)
def quantize_linear(node, x, scale, zero=None):
    a, block = node.attr("axis", 1), node.attr("block_size", 0)
    dtype = zero.dtype if zero is not None else TORCH_DTYPES[node.attr("output_dtype") or TensorProto.UINT8]
    precision = node.attr("precision")
    work = x.to(TORCH_DTYPES[precision]) if precision else x
    q = work / _spread(scale, x.shape, a, block).to(work.dtype)
    if dtype in _FLOAT8:
        return [cast_to(q, dtype, bool(node.attr("saturate", 1)))]
    codes = torch.round(q).to(torch.int64)
    if zero is not None:
        codes = codes + _spread(widened(zero), x.shape, a, block).to(torch.int64)
    low, high = int_range(dtype)
    codes = codes.clamp(low, high)
    return [narrowed(codes, dtype) if dtype in NARROW_INTS else codes.to(dtype)]


@register("DequantizeLinear", check=_check_output, narrow=True)
def dequantize_linear(node, x, scale, zero=None):
    a, block = node.attr("axis", 1), node.attr("block_size", 0)
    values = widened(x).to(torch.float32)
    if zero is not None and x.dtype not in _FLOAT8:
        values = values - _spread(widened(zero), x.shape, a, block).to(torch.float32)
    y = values * _spread(scale, x.shape, a, block)
    out = node.attr("output_dtype")
    return [y.to(TORCH_DTYPES[out] if out else scale.dtype)]
