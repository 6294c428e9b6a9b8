"""Weights as integer initializers feeding DequantizeLinear.

W (float) becomes DequantizeLinear(W_quantized, W_scale, W_zero_point) with
per-tensor scale = the layer's step and zero point 0; the node's output keeps
the name W, so every consumer is untouched. int4 storage needs opset 21. A
model declaring an opset whose DequantizeLinear onnxruntime lacks gets the
newest one it runs, where that changes no other node
(`opset.fit_dequantize_opset`).

A weight stored before a Transpose/Reshape/Cast chain is replaced where it is
stored: the DequantizeLinear feeds the chain's first node. Its output is
float32, so a float16 weight's chain carries float32 up to its Cast (to float),
which then casts float32 to float32.

onnx-graphsurgeon writes ml_dtypes.int4 arrays one byte per value, so int4
codes travel through the graph as int8 and `pack_int4` retypes them in the
exported model.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..graph.layers import WeightLayer, all_graphs, fresh_name
from ..core.plan import LayerPlan
from ..graph.io import proto_graphs
from ..graph.opset import fit_dequantize_opset
from ..core.quant import container_for
from . import layer_codes

_NUMPY_TYPES = {"int4": np.dtype(np.int8), "int8": np.dtype(np.int8), "int16": np.dtype(np.int16)}


@dataclass(frozen=True)
class StoredWeight:
    """What `apply_qdq` wrote for one layer: the container and the new constants."""

    container: str  # "int4", "int8" or "int16"
    quantized: gs.Constant  # the integer codes DequantizeLinear reads
    zero_point: gs.Constant

    @property
    def int4_names(self) -> list[str]:
        """The initializers `pack_int4` must retype (int4 travels through the graph as int8)."""
        return [self.quantized.name, self.zero_point.name] if self.container == "int4" else []


def apply_qdq(graph: gs.Graph, layer: WeightLayer, plan: LayerPlan, allow_int4: bool) -> StoredWeight:
    """Replace `layer`'s weight by codes + DequantizeLinear."""
    codes = layer_codes(layer, plan)
    container = container_for(int(np.abs(codes).max(initial=0)), allow_int4)
    fit_dequantize_opset(graph, container, plan.channel_steps is not None)
    dtype = _NUMPY_TYPES[container]
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    quantized = gs.Constant(fresh_name(f"{layer.name}_quantized", taken), codes.astype(dtype))
    if plan.channel_steps is not None:  # per-axis DequantizeLinear
        steps = np.where(plan.channel_steps > 0, plan.channel_steps, 1.0).astype(np.float32)
        attrs = {"axis": plan.channel_axis % layer.values.ndim}
    else:
        steps, attrs = np.array(plan.step if plan.step > 0 else 1.0, np.float32), {}
    scale = gs.Constant(fresh_name(f"{layer.name}_scale", taken), steps)
    zero_point = gs.Constant(fresh_name(f"{layer.name}_zero_point", taken), np.zeros(steps.shape, dtype))
    home = layer.home or graph
    output = _detach_weight(home, layer)
    dq = gs.Node("DequantizeLinear", name=fresh_name(f"{layer.name}_DequantizeLinear", taken), attrs=attrs,
                 inputs=[quantized, scale, zero_point], outputs=[output])
    home.nodes.insert(0, dq)  # its inputs are constants: first is always topologically valid
    return StoredWeight(container, quantized, zero_point)


def pack_int4(model: onnx.ModelProto, names: list[str]) -> None:
    """Retype the named int8 initializers of `model` (subgraphs included) as packed int4."""
    wanted = set(names)
    for graph in proto_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.name in wanted:
                values = numpy_helper.to_array(tensor).astype(ml_dtypes.int4)
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))


def _detach_weight(graph: gs.Graph, layer: WeightLayer) -> gs.Variable:
    """Free the tensor the consumers read, so a new node can produce it."""
    retype_chain(layer)
    if layer.producer is not None:  # a Constant node: drop it, keep its output tensor
        output = layer.producer.outputs[0]
        layer.producer.outputs.clear()
        graph.nodes.remove(layer.producer)
        output.dtype = np.float32
        return output
    output = gs.Variable(layer.name, dtype=np.float32, shape=list(layer.values.shape))
    for node, index in ([(layer.chain[0], 0)] if layer.chain else layer.uses):
        node.inputs[index] = output
    return output


def retype_chain(layer: WeightLayer) -> None:
    """The chain's tensors up to its first Cast now carry float32 (the weight's new type)."""
    for node in layer.chain:
        if node.op == "Cast":
            return
        for tensor in node.outputs:
            if tensor.dtype is not None:
                tensor.dtype = np.float32
