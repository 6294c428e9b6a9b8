"""Elementwise math, comparisons, logic and bit operations, variadic Max/Min/Mean/Sum, Where.

Torch has little arithmetic for uint16/32/64: those inputs are computed in
int64 and the result cast back (exact for uint16/32; uint64 values of 2**63 and
above wrap, exact again after the cast back for +, -, *, bit operations).
"""

from __future__ import annotations

import functools

import torch

from .registry import elementwise, register

_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def widened(fn):
    """`fn` on uint16/32/64 inputs computed in int64, its integer result cast back."""
    @functools.wraps(fn)
    def run(*xs):
        dtype = next((x.dtype for x in xs if x is not None and x.dtype in _UNSIGNED), None)
        if dtype is None:
            return fn(*xs)
        y = fn(*[x.to(torch.int64) if x is not None and x.dtype in _UNSIGNED else x for x in xs])
        return y if y.dtype == torch.bool or y.is_floating_point() else y.to(dtype)
    return run


def _div(a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a, b):
    if not a.is_floating_point() and b.is_floating_point():
        return torch.pow(a.to(b.dtype), b).to(a.dtype)
    return torch.pow(a, b).to(a.dtype)


elementwise({
    "Abs": widened(torch.abs), "Neg": torch.neg, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
    "Ceil": torch.ceil, "Round": torch.round, "Sign": widened(torch.sign), "Sqrt": torch.sqrt, "Exp": torch.exp,
    "Log": torch.log, "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
    "Not": torch.logical_not, "BitwiseNot": widened(torch.bitwise_not), "IsNaN": torch.isnan,
    "Add": widened(torch.add), "Sub": widened(torch.sub), "Mul": widened(torch.mul), "Div": widened(_div),
    "Pow": _pow, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "Equal": widened(torch.eq), "Less": widened(torch.lt), "Greater": widened(torch.gt),
    "LessOrEqual": widened(torch.le), "GreaterOrEqual": widened(torch.ge),
    "BitwiseAnd": widened(torch.bitwise_and), "BitwiseOr": widened(torch.bitwise_or),
    "BitwiseXor": widened(torch.bitwise_xor),
    "Where": lambda c, a, b: torch.where(c.bool(), a, b),
})


@register("Mod")
def mod(node, a, b):
    fn = torch.fmod if node.attr("fmod", 0) else torch.remainder
    return [widened(fn)(a, b)]


def _shift(a, b, left: bool, bits: int):
    """a << b or a >> b; shifts outside [0, bits) give 0 (or -1 for a negative a shifted right)."""
    out_of_range = (b < 0) | (b >= bits)
    b = torch.where(out_of_range, torch.zeros_like(b), b)
    y = torch.bitwise_left_shift(a, b) if left else torch.bitwise_right_shift(a, b)
    fill = torch.zeros_like(y) if left else torch.where(a < 0, -torch.ones_like(y), torch.zeros_like(y))
    return torch.where(out_of_range, fill, y)


_BITS = {torch.uint8: 8, torch.uint16: 16, torch.uint32: 32, torch.uint64: 64}


@register("BitShift")
def bit_shift(node, a, b):
    left = node.attr("direction") == "LEFT"
    bits = _BITS.get(a.dtype) or torch.iinfo(a.dtype).bits
    if a.dtype in _UNSIGNED:  # computed in int64, cast back to the unsigned width
        return [_shift(a.to(torch.int64), b.to(torch.int64), left, bits).to(a.dtype)]
    return [_shift(a, b.to(a.dtype), left, bits)]


@register("IsInf")
def is_inf(node, x):
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    return [(torch.isposinf(x) if pos else torch.zeros_like(x, dtype=torch.bool))
            | (torch.isneginf(x) if neg else torch.zeros_like(x, dtype=torch.bool))]


def _variadic(fn):
    return lambda node, *xs: [functools.reduce(widened(fn), xs)]


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(torch.add))


@register("Mean")
def mean(node, *xs):
    return [functools.reduce(torch.add, xs) / len(xs)]
