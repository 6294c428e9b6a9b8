"""Weights written back as float: the dequantized values, for any runtime.

The values keep the stored tensor's float type (a float16 weight behind a
Cast stays float16), so the graph around it is unchanged.
"""

from __future__ import annotations


from ..graph.layers import WeightLayer
from ..graph.values import stored_dtype
from ..core.plan import LayerPlan
from ..core.quant import dequantize
from . import layer_codes


def apply_float(layer: WeightLayer, plan: LayerPlan) -> str:
    """Overwrite `layer`'s constant with its compressed float values."""
    dtype = stored_dtype(layer.constant.dtype)  # bfloat16 and float8 stay themselves (ml_dtypes)
    values = dequantize(layer_codes(layer, plan), plan.steps_for(layer.values.shape))
    layer.constant.values = values.astype(dtype)
    return dtype.name
