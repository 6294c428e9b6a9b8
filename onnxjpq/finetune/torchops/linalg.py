"""MatMul, Gemm (transA, transB, alpha, beta, optional C) and Einsum."""

from __future__ import annotations

import torch

from .registry import register


@register("MatMul")
def matmul(node, a, b):
    return [torch.matmul(a, b)]


@register("Gemm")
def gemm(node, a, b, c=None):
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    y = a @ b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = y * alpha if alpha != 1.0 else y
    if c is None:
        return [y]
    return [y + (c * beta if beta != 1.0 else c)]


@register("Einsum")
def einsum(node, *xs):
    return [torch.einsum(node.attr("equation").replace(" ", ""), *xs)]


@register("Det")
def det(node, x):
    return [torch.linalg.det(x)]
