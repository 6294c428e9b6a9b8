"""Weights written back as float: the dequantized values, for any runtime."""

from __future__ import annotations

from ..layers import WeightLayer
from ..plan import LayerPlan
from ..quant import dequantize
from . import layer_codes


def apply_float(layer: WeightLayer, plan: LayerPlan) -> str:
    """Overwrite `layer`'s constant with its compressed float values."""
    layer.constant.values = dequantize(layer_codes(layer, plan), plan.steps_for(layer.values.shape))
    return "float32"
