"""Multiply-accumulates per weight layer, for BOPs (DJPQ eq. 15-16).

Shapes come from onnx's shape inference with every unknown input dimension
(batch, sequence) set to 1, so the figures are per sample and per position;
ratios between models do not depend on that choice. A model whose spatial
sizes are dynamic (an image classifier exported for any height and width) has
no MACs until a size is chosen: `tensor_shapes(model, sample_shapes)` takes it
from the data the run was given (one sample: the batch stays 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx

from .layers import WeightLayer
from .ops import weight_slot


def _fixed_inputs(model: onnx.ModelProto, sample_shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """`model` with every unknown input dimension fixed: the batch (axis 0) to 1, the others
    to the sample's size where `sample_shapes` has the input at the same rank, else to 1."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        sample = tuple(sample_shapes.get(value.name, ()))
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value < 1:
                known = len(sample) == len(dims) and axis > 0
                dim.dim_value = int(sample[axis]) if known else 1
    return fixed


def tensor_shapes(model: onnx.ModelProto, sample_shapes: Mapping[str, tuple[int, ...]] | None = None
                  ) -> dict[str, tuple[int, ...]]:
    """Static shapes of the model's tensors that shape inference can determine; `sample_shapes`
    (input name -> the shape of a data array, samples first) sizes the inputs' dynamic axes."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_fixed_inputs(model, sample_shapes or {}), data_prop=True)
    except Exception:  # inference fails on some exotic graphs: then MACs are unknown
        return {}
    shapes = {}
    stack = [inferred.graph]
    while stack:
        graph = stack.pop()
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = tuple(d.dim_value for d in dims)
        for node in graph.node:
            stack += [a.g for a in node.attribute if a.HasField("g")]
    return shapes


def layer_macs(layer: WeightLayer, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """Dense MACs of all the layer's uses, each counted by its op's rule (`ops.MACS_RULES`)."""
    total = 0
    for node, index in layer.uses:
        rule = weight_slot(node.op, index).macs
        if rule == "none":
            continue
        if not node.outputs:  # a broken graph: MACs unknown
            return None
        if rule == "recurrent":  # Y is [seq, dirs, batch, hidden]
            shape = shapes.get(node.outputs[0].name)
            if shape is None:
                return None
            total += math.prod(shape) // (shape[1] * shape[3]) * layer.values.size
            continue
        if rule == "input":
            shape, per = shapes.get(node.inputs[0].name), layer.values.size / layer.values.shape[0]
        else:
            channels = layer.values.shape[layer.axis] if layer.axis is not None else 1
            shape, per = shapes.get(node.outputs[0].name), layer.values.size / channels
        if shape is None:
            return None
        total += math.prod(shape) * per
    return int(total)
