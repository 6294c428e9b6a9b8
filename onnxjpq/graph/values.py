"""What a weight's type and values allow: the float types it may be stored in (ml_dtypes
reads bfloat16 and float8, which numpy lacks) and the values that are left as they are
(none at all, NaN or Inf, or too near float32's limit for integer codes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx

ML_FLOATS = tuple(np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                         ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz))

# onnxruntime's integer kernels (MatMulNBits) compute codes times the step with unsigned codes up to
# 255 and steps up to the layer's largest |w|: weights past this would dequantize to Inf
MAX_MAGNITUDE = float(np.finfo(np.float32).max) / 256


def stored_dtype(dtype) -> np.dtype | None:
    """The numpy dtype of a tensor's `dtype` as onnx-graphsurgeon gives it: a numpy type, or the
    ONNX type number for types numpy lacks (bfloat16, float8: ml_dtypes' types); None if unknown.

    >>> stored_dtype(onnx.TensorProto.BFLOAT16), stored_dtype(np.float32), stored_dtype(None)
    (dtype(bfloat16), dtype('float32'), None)
    """
    if dtype is None:
        return None
    try:
        if isinstance(dtype, (int, np.integer)):
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
        return np.dtype(dtype)
    except (KeyError, TypeError, ValueError):
        return None


def is_float(dtype) -> bool:
    """Whether `dtype` (as `stored_dtype` takes it) is a float type, ml_dtypes' included."""
    found = stored_dtype(dtype)
    return found is not None and (np.issubdtype(found, np.floating) or found in ML_FLOATS)


def value_refusal(values: np.ndarray) -> str | None:
    """Why a weight with these values (any float type) is left as it is, or None.

    >>> value_refusal(np.zeros((0, 8), np.float32))
    'empty (0 values: nothing to compress)'
    >>> value_refusal(np.array([1.0, np.nan]))
    '1 of 2 values are NaN or Inf (left as they are)'
    >>> value_refusal(np.array([3e38], np.float32))[:19]
    'values up to 3e+38,'
    """
    if values.size == 0:
        return "empty (0 values: nothing to compress)"
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        return f"{bad} of {values.size} values are NaN or Inf (left as they are)"
    largest = float(np.abs(values).max())
    if largest > MAX_MAGNITUDE:
        return (f"values up to {largest:.3g}, too near float32's limit ({np.finfo(np.float32).max:.3g}) "
                "for integer codes times a step (left as they are)")
    return None
