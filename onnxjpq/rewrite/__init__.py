"""Rewriters: apply a `CompressionPlan` to the graph, one storage format each.

- qdq: integer codes (int4/int8) + DequantizeLinear (default);
- dense: the dequantized values written back as float;
- sparse: qdq with the integer codes in sparse_initializer storage;
- packed: codes bit-packed at their real width with a decoder of standard ops (opset 18).
"""

from __future__ import annotations

import numpy as np

from ..graph.layers import WeightLayer
from ..core.plan import LayerPlan
from ..core.quant import quantize_codes

FORMATS = ("qdq", "float", "sparse", "packed")


def layer_codes(layer: WeightLayer, plan: LayerPlan) -> np.ndarray:
    """The integer codes the plan assigns to `layer`'s weights."""
    if plan.codes is not None:  # chosen by a data-aware solver (error compensation)
        return plan.codes
    return quantize_codes(layer.values, plan.mask, plan.steps_for(layer.values.shape), plan.keep_survivors,
                          plan.max_code)
