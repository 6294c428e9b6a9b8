"""Torch implementations of ONNX ops, for `bridge.OnnxModule` (one function per op).

Each takes the node's input tensors (None for an omitted optional input) and
its attributes, and returns its outputs as a list.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F


def _pads(attrs, rank: int) -> list[int]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError("auto_pad SAME_* is not supported")
    return pads


def _symmetric(pads: list[int], rank: int) -> list[int] | None:
    return pads[:rank] if pads[:rank] == pads[rank:] else None


def conv(x, w, b=None, attrs=None):
    rank = w.dim() - 2
    pads = _pads(attrs, rank)
    same = _symmetric(pads, rank)
    if same is None:
        x = F.pad(x, [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])])
        same = [0] * rank
    fn = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    return [fn(x, w, b, list(attrs.get("strides", [1] * rank)), same,
               list(attrs.get("dilations", [1] * rank)), attrs.get("group", 1))]


def conv_transpose(x, w, b=None, attrs=None):
    rank = w.dim() - 2
    same = _symmetric(_pads(attrs, rank), rank)
    if same is None or "output_shape" in attrs:
        raise NotImplementedError("ConvTranspose with asymmetric pads or output_shape")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    return [fn(x, w, b, list(attrs.get("strides", [1] * rank)), same,
               list(attrs.get("output_padding", [0] * rank)), attrs.get("group", 1),
               list(attrs.get("dilations", [1] * rank)))]


def gemm(a, b, c=None, attrs=None):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return [y + attrs.get("beta", 1.0) * c if c is not None else y]


def _pool(x, attrs, kind: str):
    rank = x.dim() - 2
    kernel = list(attrs["kernel_shape"])
    pads = _pads(attrs, rank)
    same = _symmetric(pads, rank)
    if same is None or any(p > k // 2 for p, k in zip(same, kernel)):
        fill = float("-inf") if kind == "max" else 0.0
        x = F.pad(x, [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])], value=fill)
        same = [0] * rank
    strides = list(attrs.get("strides", [1] * rank))
    ceil = bool(attrs.get("ceil_mode", 0))
    if kind == "max":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
        return fn(x, kernel, strides, same, list(attrs.get("dilations", [1] * rank)), ceil)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    return fn(x, kernel, strides, same, ceil, bool(attrs.get("count_include_pad", 0)))


def _shape_arg(t) -> list[int]:
    return [int(v) for v in t.tolist()]


def reshape(x, shape, attrs):
    target = _shape_arg(shape)
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [x.reshape(target)]


def _axes(attrs, axes_input, rank):
    axes = _shape_arg(axes_input) if axes_input is not None else list(attrs.get("axes", []))
    return [a % rank for a in axes]


def unsqueeze(x, axes=None, attrs=None):
    raw = _shape_arg(axes) if axes is not None else list(attrs["axes"])
    for a in sorted(a % (x.dim() + len(raw)) for a in raw):
        x = x.unsqueeze(a)
    return [x]


def cast(x, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return [x.to(torch.from_numpy(np.zeros(0, dtype)).dtype)]


def squeeze(x, axes=None, attrs=None):
    dims = _axes(attrs, axes, x.dim()) or [i for i, s in enumerate(x.shape) if s == 1]
    for a in sorted(dims, reverse=True):
        x = x.squeeze(a)
    return [x]


def reduce_mean(x, axes=None, attrs=None):
    dims = _axes(attrs, axes, x.dim()) or list(range(x.dim()))
    return [x.mean(dim=dims, keepdim=bool(attrs.get("keepdims", 1)))]


def batch_norm(x, scale, bias, mean, var, attrs):
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + attrs.get("epsilon", 1e-5))
    return [(x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)]


def layer_norm(x, scale, bias=None, attrs=None):
    axis = attrs.get("axis", -1) % x.dim()
    return [F.layer_norm(x, x.shape[axis:], scale, bias, attrs.get("epsilon", 1e-5))]


def clip(x, lo=None, hi=None, attrs=None):
    lo = lo if lo is not None else attrs.get("min")
    hi = hi if hi is not None else attrs.get("max")
    return [torch.clamp(x, lo, hi)]


def gather(x, idx, attrs):
    axis = attrs.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return [torch.index_select(x, axis, idx.reshape(-1)).reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])]


def slice_(x, starts, ends, axes=None, steps=None, attrs=None):
    starts, ends = _shape_arg(starts), _shape_arg(ends)
    axes = _shape_arg(axes) if axes is not None else list(range(len(starts)))
    steps = _shape_arg(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise NotImplementedError("Slice with negative steps")
        index[a % x.dim()] = slice(s, min(e, x.shape[a % x.dim()]), st)
    return [x[tuple(index)]]


def _binary(fn):
    return lambda a, b, attrs: [fn(a, b)]


def _unary(fn):
    return lambda x, attrs: [fn(x)]


OPS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "Reshape": reshape,
    "MatMul": _binary(torch.matmul), "Add": _binary(torch.add), "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul), "Div": _binary(torch.div), "Pow": _binary(torch.pow),
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Neg": _unary(torch.neg),
    "Identity": _unary(lambda x: x), "Dropout": lambda x, *rest, attrs: [x],
    "LeakyRelu": lambda x, attrs: [F.leaky_relu(x, attrs.get("alpha", 0.01))],
    "Clip": clip, "MaxPool": lambda x, attrs: [_pool(x, attrs, "max")],
    "AveragePool": lambda x, attrs: [_pool(x, attrs, "avg")],
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "Flatten": lambda x, attrs: [x.reshape(int(np.prod(x.shape[:attrs.get("axis", 1) % max(x.dim(), 1)])), -1)],
    "Transpose": lambda x, attrs: [x.permute(*attrs.get("perm", list(reversed(range(x.dim())))))],
    "Concat": lambda *xs, attrs: [torch.cat(xs, dim=attrs["axis"])],
    "Softmax": lambda x, attrs: [torch.softmax(x, dim=attrs.get("axis", -1))],
    "BatchNormalization": batch_norm, "LayerNormalization": layer_norm,
    "Unsqueeze": unsqueeze, "Squeeze": squeeze, "ReduceMean": reduce_mean, "Gather": gather, "Slice": slice_,
    "Shape": lambda x, attrs: [torch.tensor(x.shape, dtype=torch.int64)],
    "Cast": cast,
    "Equal": _binary(torch.eq), "Where": lambda c, a, b, attrs: [torch.where(c.bool(), a, b)],
    "Expand": lambda x, shape, attrs: [x * torch.ones(_shape_arg(shape), dtype=x.dtype)],
}
