"""ONNX element types as torch dtypes, and numpy <-> torch for the types numpy holds through ml_dtypes.

Torch has no dtype for strings or 4-bit floats; a graph with such tensors is
refused before it runs (`unsupported_type`). Its 2- and 4-bit integer dtypes
(torch.int4, uint4, int2, uint2) hold one value per byte and have no kernels:
the bridge keeps such a tensor as the value in an int8/uint8 byte viewed as the
narrow dtype, so Cast, CastLike and the quantizers know its type (`narrowed`,
`widened`); every other op is given it widened (`Graph.run`).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto

TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT8: torch.int8, TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32, TensorProto.INT64: torch.int64, TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16, TensorProto.UINT32: torch.uint32, TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool, TensorProto.COMPLEX64: torch.complex64, TensorProto.COMPLEX128: torch.complex128,
    TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: torch.float8_e5m2, TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    TensorProto.FLOAT8E8M0: torch.float8_e8m0fnu,
    TensorProto.INT4: torch.int4, TensorProto.UINT4: torch.uint4,
    TensorProto.INT2: torch.int2, TensorProto.UINT2: torch.uint2,
}

# narrow integer dtype -> (bits, signed, the byte dtype holding its values; numpy's ml_dtypes type)
NARROW_INTS: dict[torch.dtype, tuple[int, bool, torch.dtype, np.dtype]] = {
    torch.int4: (4, True, torch.int8, np.dtype(ml_dtypes.int4)),
    torch.uint4: (4, False, torch.uint8, np.dtype(ml_dtypes.uint4)),
    torch.int2: (2, True, torch.int8, np.dtype(ml_dtypes.int2)),
    torch.uint2: (2, False, torch.uint8, np.dtype(ml_dtypes.uint2)),
}
_NARROW_OF_NUMPY = {np_dtype: (torch_dtype, byte) for torch_dtype, (_, _, byte, np_dtype) in NARROW_INTS.items()}

# numpy (ml_dtypes) types torch.from_numpy does not take: the integer type of the same width to view them through.
_VIEWED = {
    np.dtype(ml_dtypes.bfloat16): (np.int16, torch.bfloat16),
    np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz): (np.uint8, torch.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2): (np.uint8, torch.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz): (np.uint8, torch.float8_e5m2fnuz),
    np.dtype(ml_dtypes.float8_e8m0fnu): (np.uint8, torch.float8_e8m0fnu),
}
_NUMPY_OF = {torch_dtype: np_dtype for np_dtype, (_, torch_dtype) in _VIEWED.items()}


def torch_dtype(elem_type: int) -> torch.dtype:
    return TORCH_DTYPES[elem_type]


def unsupported_type(elem_type: int) -> str | None:
    """Why tensors of this ONNX element type cannot run in torch, or None."""
    if elem_type in TORCH_DTYPES:
        return None
    return f"{TensorProto.DataType.Name(elem_type)} tensors (torch has no such dtype)"


def int_range(dtype: torch.dtype) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype, narrow ones included."""
    if dtype in NARROW_INTS:
        bits, signed = NARROW_INTS[dtype][:2]
        return (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def widened(t: torch.Tensor) -> torch.Tensor:
    """A narrow-integer tensor as its int8/uint8 values (any other tensor as it is)."""
    narrow = NARROW_INTS.get(t.dtype)
    return t if narrow is None else t.view(narrow[2])


def narrowed(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Integer `values` in a narrow dtype, wrapped modulo 2^bits as ONNX's Cast does
    (9 -> -7 in int4); clamp first for a saturating conversion."""
    bits, signed, byte, _ = NARROW_INTS[dtype]
    wrapped = values.to(torch.int64) & ((1 << bits) - 1)
    if signed:
        wrapped = torch.where(wrapped >= 1 << bits - 1, wrapped - (1 << bits), wrapped)
    return wrapped.to(byte).view(dtype)


def to_torch(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    narrow = _NARROW_OF_NUMPY.get(array.dtype)
    if narrow is not None:
        torch_dtype, byte = narrow
        return torch.from_numpy(array.astype(np.int8 if byte == torch.int8 else np.uint8)).view(torch_dtype)
    viewed = _VIEWED.get(array.dtype)
    if viewed is not None:
        return torch.from_numpy(np.array(array, order="C").view(viewed[0])).view(viewed[1])
    if array.dtype.kind in "OUS":
        raise TypeError(f"torch has no dtype for {array.dtype} arrays")
    return torch.from_numpy(np.array(array))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    narrow = NARROW_INTS.get(tensor.dtype)
    if narrow is not None:
        return widened(tensor).numpy().astype(narrow[3])
    np_dtype = _NUMPY_OF.get(tensor.dtype)
    if np_dtype is not None:
        width = torch.int16 if tensor.dtype == torch.bfloat16 else torch.uint8
        return tensor.contiguous().view(width).numpy().view(np_dtype)
    return tensor.numpy()


def tensor_of(proto: onnx.TensorProto) -> torch.Tensor:
    return to_torch(onnx.numpy_helper.to_array(proto))
