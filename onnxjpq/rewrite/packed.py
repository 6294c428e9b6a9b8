"""Weights stored bit-packed (`core/packing.py`) behind a decoder made of standard ONNX ops.

The decoder turns the packed arrays (initializers) back into the float weight,
under the weight's own name, so every consumer is untouched:

    plane  --BitShift left by 8-(j+1)b, per slot j--> [k, bytes] (slot j's bits on top)
           --Reshape, Slice--> [n] --BitShift right by 8-b--> the plane's fields
           --BitShift left by s--> at their place in the code
    fields = BitwiseOr of the planes (uint8; uint32 for codes over 8 bits)
    values = Cast(fields, float) - 2^(w-1), one stream per width, Concat
    mask:  block = GatherElements(Concat(0, values), CumSum(mask) * mask)
    runs:  block = ScatterElements(ConstantOfShape(n), CumSum(runs + 1) - 1, values)
    weight = Reshape(block) * steps, then for channel order: Concat(one zero row),
             Gather(rows), Reshape, Transpose back to the weight's layout

Every input is a constant, so onnxruntime folds the decoder into one float
initializer when it creates a session (at ORT_ENABLE_BASIC and above): the
kernels see a plain float weight. Opset 18 (BitwiseOr) or newer.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.core.packing import (PackedLayer, channel_view, describe, encode, plane_shifts,
                                  plane_widths)
from onnxjpq.errors import ModelError
from ..graph.layers import WeightLayer, all_graphs
from ..core.plan import LayerPlan
from . import layer_codes
from onnxjpq.rewrite.qdq import _detach_weight

PACKED_MIN_OPSET = 18  # BitwiseOr


class _Builder:
    """Nodes (`prefix/tag`) and initializers (`prefix/const/tag`); equal small constants are stored once."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers = prefix, [], []
        self._constants: dict[tuple, str] = {}

    def const(self, tag: str, value) -> str:
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = f"{self.prefix}/const/{tag}"
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._constants[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], tag: str, **attrs) -> str:
        name = f"{self.prefix}/{tag}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def decoder_nodes(name_prefix: str, output_name: str, packed: PackedLayer
                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers computing `packed`'s float weight into `output_name`.

    Every other tensor is named `name_prefix/...`. The same input gives the same protos.
    """
    b = _Builder(name_prefix)
    if not packed.values:
        zeros = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
        b.op("ConstantOfShape", [b.const("shape", np.array(packed.shape, np.int64))], "zeros", value=zeros)
    else:
        block = _block(b, packed)
        block = b.op("Mul", [block, b.const("steps", packed.steps)], "scaled")
        if packed.order == "channel":
            _to_weight_layout(b, packed, block)
    b.nodes[-1].output[0] = output_name
    return b.nodes, b.initializers


def _block(b: _Builder, packed: PackedLayer) -> str:
    """The codes as float, in block order and shape (before the steps)."""
    parts = []
    for stream in packed.values:
        fields = _fields(b, stream, f"w{stream.width}")
        as_float = b.op("Cast", [fields], f"w{stream.width}/float", to=TensorProto.FLOAT)
        offset = b.const(f"w{stream.width}/offset", np.array(1 << (stream.width - 1), np.float32))
        parts.append(b.op("Sub", [as_float, offset], f"w{stream.width}/codes"))
    values = parts[0] if len(parts) == 1 else b.op("Concat", parts, "values", axis=0)
    size = math.prod(packed.block)
    if packed.sparsity == "mask":
        values = _expand_by_mask(b, packed, values)
    elif packed.sparsity == "runs":
        zeros = b.op("ConstantOfShape", [b.const("size", np.array([size], np.int64))], "zeros",
                     value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
        values = b.op("ScatterElements", [zeros, _run_positions(b, packed), values], "scattered", axis=0)
    return b.op("Reshape", [values, b.const("block_shape", np.array(packed.block, np.int64))], "block")


def _fields(b: _Builder, stream, tag: str) -> str:
    """A stream's unsigned fields [count]: uint8, or uint32 for streams over 8 bits."""
    wide = stream.width > 8
    planes = []
    for i, (plane, bits, shift) in enumerate(zip(stream.planes, plane_widths(stream.width),
                                                 plane_shifts(stream.width))):
        field = b.const(f"{tag}/plane{i}", plane)
        if bits < 8:
            per_byte = 8 // bits
            lefts = np.array([8 - (j + 1) * bits for j in range(per_byte)], np.uint8).reshape(-1, 1)
            field = b.op("BitShift", [field, b.const(f"{tag}/left{bits}", lefts)], f"{tag}/plane{i}/top",
                         direction="LEFT")
            field = b.op("Reshape", [field, b.const("flat", np.array([-1], np.int64))], f"{tag}/plane{i}/flat")
            if per_byte * plane.size != stream.count:
                field = b.op("Slice", [field, b.const("zero", np.array([0], np.int64)),
                                       b.const(f"{tag}/count", np.array([stream.count], np.int64))],
                             f"{tag}/plane{i}/sliced")
            field = b.op("BitShift", [field, b.const(f"right{8 - bits}", np.array(8 - bits, np.uint8))],
                         f"{tag}/plane{i}/fields", direction="RIGHT")
        if wide:
            field = b.op("Cast", [field], f"{tag}/plane{i}/wide", to=TensorProto.UINT32)
        if shift:
            dtype = np.uint32 if wide else np.uint8
            field = b.op("BitShift", [field, b.const(f"left{shift}_{np.dtype(dtype).name}", np.array(shift, dtype))],
                         f"{tag}/plane{i}/placed", direction="LEFT")
        planes.append(field)
    fields = planes[0]
    for i, plane in enumerate(planes[1:], 1):
        fields = b.op("BitwiseOr", [fields, plane], f"{tag}/or{i}")
    return fields


def _expand_by_mask(b: _Builder, packed: PackedLayer, values: str) -> str:
    """Every position's value: [0, values...] gathered at rank = cumsum(mask)·mask.

    Fixed shapes throughout (onnxruntime folds no Compress or NonZero: their
    output size is unknown before they run).
    """
    mask = b.op("Cast", [_fields(b, packed.index, "index")], "index/mask", to=TensorProto.INT32)
    ranks = b.op("CumSum", [mask, b.const("zero32", np.array(0, np.int32))], "index/ranks")
    ranks = b.op("Mul", [ranks, mask], "index/kept_ranks")
    padded = b.op("Concat", [b.const("zero_value", np.zeros(1, np.float32)), values], "values_after_zero", axis=0)
    return b.op("GatherElements", [padded, ranks], "expanded", axis=0)


def _run_positions(b: _Builder, packed: PackedLayer) -> str:
    """int32 block positions of the stored values: cumsum(run + 1) - 1."""
    one = b.const("one32", np.array(1, np.int32))
    runs = b.op("Cast", [_fields(b, packed.index, "index")], "index/runs", to=TensorProto.INT32)
    steps = b.op("Add", [runs, one], "index/advance")
    ends = b.op("CumSum", [steps, b.const("zero32", np.array(0, np.int32))], "index/ends")
    return b.op("Sub", [ends, one], "index/positions")


def _to_weight_layout(b: _Builder, packed: PackedLayer, block: str) -> None:
    """Channel-ordered rows back to the weight: zero row, rows, then undo to_channels."""
    rows, per_channel = packed.block
    n_channels = rows if packed.rows is None else packed.rows.size
    if rows < n_channels:
        zero_row = b.op("ConstantOfShape", [b.const("row_shape", np.array([1, per_channel], np.int64))],
                        "zero_row", value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
        block = b.op("Concat", [block, zero_row], "with_zero_row", axis=0)
    if packed.rows is not None:
        index = b.const("rows", packed.rows)
        if packed.rows.dtype != np.int32:
            index = b.op("Cast", [index], "rows32", to=TensorProto.INT32)
        block = b.op("Gather", [block, index], "channels", axis=0)
    view, perm = channel_view(packed.shape, packed.axis, packed.groups)
    block = b.op("Reshape", [block, b.const("view", np.array(view, np.int64))], "view")
    if perm != tuple(range(len(perm))):
        block = b.op("Transpose", [block], "transposed", perm=list(perm))
    if tuple(view[p] for p in perm) != packed.shape:
        b.op("Reshape", [block, b.const("shape", np.array(packed.shape, np.int64))], "weight")


def decoder_model(packed: PackedLayer, name: str = "W", opset: int = PACKED_MIN_OPSET) -> onnx.ModelProto:
    """A model with no input whose one output, `name`, is `packed`'s decoded weight."""
    nodes, initializers = decoder_nodes(f"{name}_packed", name, packed)
    output = helper.make_tensor_value_info(name, TensorProto.FLOAT, list(packed.shape))
    graph = helper.make_graph(nodes, "packed_decoder", [], [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def apply_packed(graph: gs.Graph, layer: WeightLayer, plan: LayerPlan) -> str:
    """Replace `layer`'s weight by packed arrays + their decoder; return a storage label
    ("packed3-5+mask": code widths 3 to 5, a bitmask index; see core.packing.describe)."""
    if (graph.opset or 0) < PACKED_MIN_OPSET:
        raise ModelError(f"the packed format needs opset {PACKED_MIN_OPSET} or newer (model: {graph.opset})")
    codes = layer_codes(layer, plan)
    if plan.channel_steps is not None:
        axis = plan.channel_axis % layer.values.ndim
        groups = layer.groups if axis == layer.axis % layer.values.ndim else 1
        packed = encode(codes, axis, groups, plan.channel_steps)
    else:
        packed = encode(codes, layer.axis, layer.groups, plan.step)
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    prefix = _fresh_prefix(f"{layer.name}_packed", taken)
    home = layer.home or graph
    output = _detach_weight(home, layer)
    nodes, initializers = decoder_nodes(prefix, output.name, packed)
    decoder = gs.import_onnx(helper.make_model(
        helper.make_graph(nodes, "decoder", [], [helper.make_tensor_value_info(output.name, TensorProto.FLOAT, None)],
                          initializers), opset_imports=[helper.make_opsetid("", graph.opset)]))
    last = decoder.nodes[-1]
    last.outputs[0] = output
    home.nodes[0:0] = decoder.nodes  # inputs are constants: first is always topologically valid
    return describe(packed)


def _fresh_prefix(prefix: str, taken: set[str]) -> str:
    """`prefix`, or `prefix_N`, such that no tensor is named it or starts with it and a slash."""
    candidate, n = prefix, 1
    while candidate in taken or any(name.startswith(candidate + "/") for name in taken):
        candidate, n = f"{prefix}_{n}", n + 1
    return candidate
