"""Weights stored bit-packed (`core/packing.py`) behind a decoder made of standard ONNX ops.

The decoder turns the packed arrays (initializers) back into the float weight,
under the weight's own name, so every consumer is untouched. The code block is
assembled in uint8 (uint16 for codes over 8 bits), u = 0 meaning zero:

    plane   --BitShift left by 8-(j+1)b, per slot j--> [k, bytes] (slot j's bits on top)
            --Reshape, Slice--> [n] --BitShift right by 8-b--> the plane's fields
            --BitShift left by s, BitwiseOr--> u, one stream per width; Concat
    dense:  block = u
    mask:   block = GatherElements(Concat(0, u), CumSum(mask) * mask)
    runs:   block = ScatterElements(zeros, CumSum(runs + 1) - 1, u)
    block   --Reshape [rows, per channel], Concat zero row, Gather rows--> u per channel
    table   T[r, u] = Where(u == 0, 0, u - 2^(w_r-1)) * step_r     (Range, Sub, Where, Mul: small)
    weight  = GatherElements(T, Cast(block, int32), axis=1) --Reshape, Transpose--> the weight
              (a [K, N] weight: Transpose the uint8 block and T first, then look up along axis 0)

Every input is a constant, so onnxruntime folds the decoder into one float
initializer when it creates a session (ORT_ENABLE_BASIC and above). It folds
no Compress or NonZero (their output size is unknown before they run), so
none is used. It keeps each folded intermediate until its folding pass ends,
so the block is built in uint8 and turned into floats by one lookup: that
keeps the peak memory of loading low. Opset 18 (BitwiseOr) or newer.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from ..core.packing import (
    PackedLayer,
    channel_view,
    describe,
    encode,
    plane_shifts,
    plane_widths,
    row_steps,
)
from ..core.plan import LayerPlan
from ..errors import ModelError
from ..graph.layers import WeightLayer, all_graphs
from . import layer_codes
from .qdq import _detach_weight

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
        b.op("ConstantOfShape", [b.const("shape", np.array(packed.shape, np.int64))], "zeros",
             value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    else:
        block, table = _block(b, packed), _table(b, packed)
        if packed.rows is not None:
            rows = b.const("rows", packed.rows)
            if packed.rows.dtype != np.int32:
                rows = b.op("Cast", [rows], "rows32", to=TensorProto.INT32)
            block = b.op("Gather", [block, rows], "channel_codes", axis=0)
            table = b.op("Gather", [table, rows], "channel_table", axis=0)
        if _channels_last(packed):  # [K, C]: look up in the weight's layout, no float Transpose
            index = b.op("Cast", [b.op("Transpose", [block], "weight_codes", perm=[1, 0])], "weight_index",
                         to=TensorProto.INT32)
            table = b.op("Transpose", [table], "table_by_code", perm=[1, 0])
            b.op("GatherElements", [table, index], "weight", axis=0)
        else:
            index = b.op("Cast", [block], "channel_index", to=TensorProto.INT32)
            _to_weight_layout(b, packed, b.op("GatherElements", [table, index], "channels", axis=1))
    b.nodes[-1].output[0] = output_name
    return b.nodes, b.initializers


def _channels_last(packed: PackedLayer) -> bool:
    """A 2-D weight whose output channels are its columns (MatMul's [K, N])."""
    return len(packed.shape) == 2 and packed.axis == 1 and packed.groups == 1


def _block(b: _Builder, packed: PackedLayer) -> str:
    """The block of u [rows, per channel], zero row included: uint8, or uint16 past 8 bits."""
    wide = packed.table_width > 8
    parts = [_fields(b, stream, f"w{stream.width}", wide) for stream in packed.values]
    values = parts[0] if len(parts) == 1 else b.op("Concat", parts, "values", axis=0)
    if packed.sparsity == "mask":
        mask = b.op("Cast", [_fields(b, packed.index, "index", False)], "index/mask", to=TensorProto.INT32)
        ranks = b.op("CumSum", [mask, b.const("zero32", np.array(0, np.int32))], "index/ranks")
        ranks = b.op("Mul", [ranks, mask], "index/kept_ranks")
        zero = b.const("zero_code", np.zeros(1, np.uint16 if wide else np.uint8))
        padded = b.op("Concat", [zero, values], "values_after_zero", axis=0)
        values = b.op("GatherElements", [padded, ranks], "expanded", axis=0)
    elif packed.sparsity == "runs":
        size = b.const("size", np.array([math.prod(packed.block)], np.int64))
        zeros = b.op("ConstantOfShape", [size], "zeros", value=_zero(wide))
        values = b.op("ScatterElements", [zeros, _run_positions(b, packed), values], "scattered", axis=0)
    block = b.op("Reshape", [values, b.const("block_shape", np.array(packed.block, np.int64))], "block")
    if packed.zero_row:
        row_shape = b.const("row_shape", np.array([1, packed.block[1]], np.int64))
        zero_row = b.op("ConstantOfShape", [row_shape], "zero_row", value=_zero(wide))
        block = b.op("Concat", [block, zero_row], "with_zero_row", axis=0)
    return block


def _zero(wide: bool) -> onnx.TensorProto:
    return helper.make_tensor("value", TensorProto.UINT16 if wide else TensorProto.UINT8, [1], [0])


def _fields(b: _Builder, stream, tag: str, wide: bool) -> str:
    """A stream's fields [count]: uint8, or uint16 when `wide`."""
    planes = []
    for i, (plane, bits, shift) in enumerate(zip(stream.planes, plane_widths(stream.width),
                                                 plane_shifts(stream.width))):
        field = b.const(f"{tag}/plane{i}", plane)
        if bits < 8:
            per_byte = 8 // bits
            lefts = np.array([8 - (j + 1) * bits for j in range(per_byte)], np.uint8).reshape(-1, 1)
            field = b.op("BitShift", [field, b.const(f"left{bits}", lefts)], f"{tag}/plane{i}/top",
                         direction="LEFT")
            field = b.op("Reshape", [field, b.const("flat", np.array([-1], np.int64))], f"{tag}/plane{i}/flat")
            if per_byte * plane.size != stream.count:
                field = b.op("Slice", [field, b.const("zero", np.array([0], np.int64)),
                                       b.const(f"{tag}/count", np.array([stream.count], np.int64))],
                             f"{tag}/plane{i}/sliced")
            field = b.op("BitShift", [field, b.const(f"right{8 - bits}", np.array(8 - bits, np.uint8))],
                         f"{tag}/plane{i}/fields", direction="RIGHT")
        if wide:
            field = b.op("Cast", [field], f"{tag}/plane{i}/wide", to=TensorProto.UINT16)
        if shift:
            dtype = np.dtype(np.uint16 if wide else np.uint8)
            field = b.op("BitShift", [field, b.const(f"left{shift}_{dtype.name}", np.array(shift, dtype))],
                         f"{tag}/plane{i}/placed", direction="LEFT")
        planes.append(field)
    fields = planes[0]
    for i, plane in enumerate(planes[1:], 1):
        fields = b.op("BitwiseOr", [fields, plane], f"{tag}/or{i}")
    return fields


def _run_positions(b: _Builder, packed: PackedLayer) -> str:
    """int32 block positions of the stored values: cumsum(run + 1) - 1."""
    one = b.const("one32", np.array(1, np.int32))
    runs = b.op("Cast", [_fields(b, packed.index, "index", False)], "index/runs", to=TensorProto.INT32)
    steps = b.op("Add", [runs, one], "index/advance")
    ends = b.op("CumSum", [steps, b.const("zero32", np.array(0, np.int32))], "index/ends")
    return b.op("Sub", [ends, one], "index/positions")


def _table(b: _Builder, packed: PackedLayer) -> str:
    """T[r, u] = Where(u == 0, 0, u - 2^(w_r-1)) * step_r: float [rows, 2^table_width]."""
    zero = b.const("float_zero", np.array(0, np.float32))
    u = b.op("Range", [zero, b.const("u_end", np.array(1 << packed.table_width, np.float32)),
                       b.const("float_one", np.array(1, np.float32))], "table/u")
    offsets = []
    for stream, n_rows in zip(packed.values, packed.channels):
        offset = helper.make_tensor("value", TensorProto.FLOAT, [1], [1 << (stream.width - 1)])
        offsets.append(b.op("ConstantOfShape", [b.const(f"w{stream.width}/rows", np.array([n_rows, 1], np.int64))],
                            f"table/offset{stream.width}", value=offset))
    if packed.zero_row:
        offsets.append(b.const("zero_row_offset", np.zeros((1, 1), np.float32)))
    offsets = offsets[0] if len(offsets) == 1 else b.op("Concat", offsets, "table/offsets", axis=0)
    codes = b.op("Sub", [u, offsets], "table/codes")
    codes = b.op("Where", [b.op("Equal", [u, zero], "table/unused"), zero, codes], "table/kept_codes")
    return b.op("Mul", [codes, b.const("steps", row_steps(packed))], "table")


def _to_weight_layout(b: _Builder, packed: PackedLayer, channels: str) -> None:
    """Channel rows [channels, per channel] back in the weight's layout (undo to_channels)."""
    view, perm = channel_view(packed.shape, packed.axis, packed.groups)
    n_channels = packed.block[0] if packed.rows is None else packed.rows.size
    if tuple(view) != (n_channels, packed.block[1]):
        channels = b.op("Reshape", [channels, b.const("view", np.array(view, np.int64))], "view")
    if perm != tuple(range(len(perm))):
        channels = b.op("Transpose", [channels], "transposed", perm=list(perm))
    if tuple(view[p] for p in perm) != packed.shape:
        b.op("Reshape", [channels, b.const("shape", np.array(packed.shape, np.int64))], "weight")


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
        same_axis = layer.axis is not None and axis == layer.axis % layer.values.ndim
        groups = layer.groups if same_axis else 1
        packed = encode(codes, axis, groups, plan.channel_steps)
    else:
        packed = encode(codes, layer.axis, layer.groups, plan.step)
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    prefix = _fresh_prefix("p", taken)  # short: the decoder names add up in small models
    home = layer.home or graph
    output = _detach_weight(home, layer)
    nodes, initializers = _compact(*decoder_nodes(prefix, output.name, packed), prefix)
    decoder = gs.import_onnx(helper.make_model(
        helper.make_graph(nodes, "decoder", [], [helper.make_tensor_value_info(output.name, TensorProto.FLOAT, None)],
                          initializers), opset_imports=[helper.make_opsetid("", graph.opset)]))
    last = decoder.nodes[-1]
    last.outputs[0] = output
    home.nodes[0:0] = decoder.nodes  # inputs are constants: first is always topologically valid
    return describe(packed)


def _compact(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], prefix: str
             ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The decoder with its internal tensors renamed `prefix/0`, `prefix/1`, ... and its nodes
    unnamed: in a small model the descriptive names would outweigh the packed bits."""
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name.startswith(prefix + "/"):
            return name
        return short.setdefault(name, f"{prefix}/{len(short)}")

    for tensor in initializers:
        tensor.name = rename(tensor.name)
    for node in nodes:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    return nodes, initializers


def _fresh_prefix(prefix: str, taken: set[str]) -> str:
    """`prefix`, or `prefix_N`, such that no tensor is named it or starts with it and a slash."""
    candidate, n = prefix, 1
    while candidate in taken or any(name.startswith(candidate + "/") for name in taken):
        candidate, n = f"{prefix}_{n}", n + 1
    return candidate
