"""Cast and CastLike, with ONNX's float8 rules (saturate, e8m0 rounding modes) and its 2- and
4-bit integers (truncated toward zero, then wrapped: float 9.5 is int4 -7)."""

from __future__ import annotations

import torch
from .dtypes import NARROW_INTS, TORCH_DTYPES, narrowed, unsupported_type, widened
from .registry import register

# Largest finite value, and the magnitude from which a non-saturating cast overflows (half an ulp above it).
_FLOAT8_LIMITS = {
    torch.float8_e4m3fn: (448.0, 464.0), torch.float8_e4m3fnuz: (240.0, 248.0),
    torch.float8_e5m2: (57344.0, 61440.0), torch.float8_e5m2fnuz: (57344.0, 61440.0),
}
_OVERFLOW_TO_INF = (torch.float8_e5m2,)


def _e8m0(x: torch.Tensor, saturate: bool, round_mode: str) -> torch.Tensor:
    """float8e8m0 (a bare power-of-two exponent) from float32 bits, as onnx.numpy_helper.to_float8e8m0."""
    bits = x.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    if round_mode == "nearest":
        guard, rnd, sticky = (bits & 0x400000) > 0, (bits & 0x200000) > 0, (bits & 0x1FFFFF) > 0
        up = guard & (rnd | sticky | (exponent > 0))
    elif round_mode == "up":
        up = (bits & 0x7FFFFF) > 0
    else:
        up = torch.zeros_like(special)
    up = up & ~special
    if saturate:
        up = up & (exponent != 0xFE)
    out = torch.where(special, torch.full_like(exponent, 0xFF), (exponent + up.to(torch.int64)) & 0xFF)
    return out.to(torch.uint8).view(torch.float8_e8m0fnu)


def cast_to(x: torch.Tensor, dtype: torch.dtype, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    if dtype == x.dtype:
        return x
    x = widened(x)
    if dtype in NARROW_INTS:
        if x.is_floating_point():
            x = torch.nan_to_num(x.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0).trunc()
        return narrowed(x, dtype)
    if dtype == torch.float8_e8m0fnu:
        return _e8m0(x, saturate, round_mode)
    limits = _FLOAT8_LIMITS.get(dtype)
    if limits is None or x.dtype in _FLOAT8_LIMITS:
        return x.to(dtype)
    top, overflow = limits
    x = x.to(torch.float32)
    if saturate:
        return x.clamp(-top, top).to(dtype)
    big = torch.tensor(float("inf") if dtype in _OVERFLOW_TO_INF else float("nan"))
    return torch.where(x.abs() >= overflow, big.copysign(x), x).to(dtype)


def _check_to(node) -> str | None:
    return unsupported_type(node.attr("to"))


@register("Cast", check=_check_to, narrow=True)
def cast(node, x):
    return [cast_to(x, TORCH_DTYPES[node.attr("to")], bool(node.attr("saturate", 1)), node.attr("round_mode", "up"))]


@register("CastLike", narrow=True)
def cast_like(node, x, like):
    return [cast_to(x, like.dtype, bool(node.attr("saturate", 1)), node.attr("round_mode", "up"))]

