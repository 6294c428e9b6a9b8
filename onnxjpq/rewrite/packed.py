"""Weights stored bit-packed (`core/packing.py`) behind one decoder of standard ONNX ops per graph.

The decoder turns the packed arrays (initializers) back into the float weights,
under the weights' own names, so every consumer is untouched. It decodes the small
layers of a graph (blocks under DECODE_ALONE positions) together, so that their
nodes are shared and a small layer costs a few nodes, not a few dozen; a large
layer is decoded alone, by the same steps:

    streams  every value stream and index of every layer, by width w: one bit-packed
             stream per width (planes of 8, 4, 2, 1 bits) --BitShift, BitwiseAnd, BitwiseOr--> u,
             then Split into the layers' pieces
    groups   the layers of one sparsity kind as one block (`packing.group_blocks`):
             dense:  block = Concat(values)
             mask:   block = GatherElements(Concat(0, values), CumSum(mask) * mask)
             runs:   block = ScatterElements(zeros, CumSum(runs + 1) - 1, values)
             then Split into the layers' blocks
    layers   block --Reshape [rows, per channel] (zero row, Gather rows: channel order)-->
             u per channel; table T = unzigzag(u)·step (one row, or one per channel);
             weight = GatherElements(T, Cast(u, int32)) --Reshape, Transpose--> the weight
             (a [K, N] weight: Transpose the uint8 block and T first, look up along axis 0)

Every input is a constant, so onnxruntime folds the decoder into float
initializers when it creates a session (ORT_ENABLE_BASIC and above). It folds
no Compress or NonZero (their output size is unknown before they run), so
none is used. The block stays uint8 (uint16 for codes over 8 bits) up to the one
lookup that makes floats: that keeps the peak memory of loading low. Opset 18
(BitwiseOr) or newer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from ..core.packing import (
    Group,
    PackedLayer,
    Segment,
    channel_view,
    describe,
    encode,
    group_blocks,
    pack_stream,
    plane_shifts,
    plane_widths,
    row_steps,
    unzigzag,
)
from ..core.plan import LayerPlan
from ..errors import ModelError
from ..graph.layers import WeightLayer, all_graphs
from . import layer_codes
from .qdq import _detach_weight

PACKED_MIN_OPSET = 18  # BitwiseOr
DECODE_ALONE = 1 << 16  # block positions from which a layer is decoded on its own: its nodes are
# few next to its bits, and joining its block to others' would copy it once more at load


class _Builder:
    """Nodes and initializers named `prefix/0`, `prefix/1`, ... (short: in a small model the names
    would outweigh the packed bits); equal small constants, and equal derived tensors, are made once."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers = prefix, [], []
        self._count = 0
        self._shared: dict[tuple, str] = {}

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}/{self._count - 1}"

    def const(self, value) -> str:
        array = np.asarray(value)
        key = ("const", array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key in self._shared:
            return self._shared[key]
        name = self._name()
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._shared[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self._name() for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def shared(self, key: tuple, build) -> str:
        """The tensor `build()` makes, made once per key."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def split(self, tensor: str, sizes: list[int]) -> list[str]:
        if len(sizes) == 1:
            return [tensor]
        return self.op("Split", [tensor, self.const(np.array(sizes, np.int64))], len(sizes), axis=0)


def decoder_nodes(prefix: str, outputs: Sequence[str], layers: Sequence[PackedLayer]
                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers computing each of `layers`' float weights into `outputs`.

    Every other tensor is named `prefix/N`. The same input gives the same protos.
    """
    b = _Builder(prefix)
    small = [i for i, p in enumerate(layers) if math.prod(p.block) < DECODE_ALONE]
    blocks = {}
    for batch in [small] + [[i] for i in range(len(layers)) if i not in small]:
        members = [layers[i] for i in batch]
        groups = group_blocks(members)
        for j, name in _group_blocks(b, groups, _pieces(b, groups), members).items():
            blocks[batch[j]] = name
    for i, (output, packed) in enumerate(zip(outputs, layers)):
        if not packed.values:
            b.op("ConstantOfShape", [b.const(np.array(packed.shape, np.int64))],
                 value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
        else:
            _weight(b, packed, blocks[i])
        b.nodes[-1].output[0] = output
    return b.nodes, b.initializers


def _pieces(b: _Builder, groups: list[Group]) -> dict[int, str]:
    """Every segment of `groups` (by id) as a tensor of its fields: one stream per width, Split."""
    by_width: dict[int, list[Segment]] = {}
    for group in groups:
        for segment in ([group.index] if group.index is not None else []) + list(group.values):
            by_width.setdefault(segment.width, []).append(segment)
    pieces = {}
    for width, segments in sorted(by_width.items()):
        stream = pack_stream(np.concatenate([s.fields for s in segments]), width)
        names = b.split(_fields(b, stream), [s.fields.size for s in segments])
        pieces.update({id(s): name for s, name in zip(segments, names)})
    return pieces


def _fields(b: _Builder, stream) -> str:
    """A stream's fields [count]: uint8, or uint16 past 8 bits."""
    wide = stream.width > 8
    dtype = np.dtype(np.uint16 if wide else np.uint8)
    planes = []
    for plane, bits, shift in zip(stream.planes, plane_widths(stream.width), plane_shifts(stream.width)):
        field = b.const(plane)
        if bits < 8:  # slot j holds bits j*b..(j+1)*b-1: shift it down and mask it (no overflow to rely on)
            per_byte = 8 // bits
            rights = np.array([j * bits for j in range(per_byte)], np.uint8).reshape(-1, 1)
            field = b.op("BitShift", [field, b.const(rights)], direction="RIGHT")
            field = b.op("BitwiseAnd", [field, b.const(np.array((1 << bits) - 1, np.uint8))])
            field = b.op("Reshape", [field, b.const(np.array([-1], np.int64))])
            if per_byte * plane.size != stream.count:
                field = b.op("Slice", [field, b.const(np.array([0], np.int64)),
                                       b.const(np.array([stream.count], np.int64))])
        if wide:
            field = b.op("Cast", [field], to=TensorProto.UINT16)
        if shift:
            field = b.op("BitShift", [field, b.const(np.array(shift, dtype))], direction="LEFT")
        planes.append(field)
    fields = planes[0]
    for plane in planes[1:]:
        fields = b.op("BitwiseOr", [fields, plane])
    return fields


def _group_blocks(b: _Builder, groups: list[Group], pieces: dict[int, str], layers: Sequence[PackedLayer]
                  ) -> dict[int, str]:
    """Each member layer's block of u, flat (zero row not included), by layer index."""
    blocks = {}
    for group in groups:
        wide = layers[group.members[0]].table_width > 8  # the same for every member
        values = [pieces[id(s)] for s in group.values]
        if wide:
            values = [v if s.width > 8 else b.op("Cast", [v], to=TensorProto.UINT16)
                      for v, s in zip(values, group.values)]
        values = values[0] if len(values) == 1 else b.op("Concat", values, axis=0)
        if group.sparsity == "mask":
            mask = b.op("Cast", [pieces[id(group.index)]], to=TensorProto.INT32)
            ranks = b.op("CumSum", [mask, b.const(np.array(0, np.int32))])
            ranks = b.op("Mul", [ranks, mask])
            padded = b.op("Concat", [b.const(np.zeros(1, np.uint16 if wide else np.uint8)), values], axis=0)
            values = b.op("GatherElements", [padded, ranks], axis=0)
        elif group.sparsity == "runs":
            one = b.const(np.array(1, np.int32))
            runs = b.op("Cast", [pieces[id(group.index)]], to=TensorProto.INT32)
            ends = b.op("CumSum", [b.op("Add", [runs, one]), b.const(np.array(0, np.int32))])
            zeros = b.op("ConstantOfShape", [b.const(np.array([sum(group.sizes)], np.int64))], value=_zero(wide))
            values = b.op("ScatterElements", [zeros, b.op("Sub", [ends, one]), values], axis=0)
        blocks.update(zip(group.members, b.split(values, list(group.sizes))))
    return blocks


def _zero(wide: bool) -> onnx.TensorProto:
    return helper.make_tensor("value", TensorProto.UINT16 if wide else TensorProto.UINT8, [1], [0])


def _weight(b: _Builder, packed: PackedLayer, block: str) -> None:
    """The float weight of one layer from its flat block of u."""
    one_step = packed.steps.ndim == 0
    table = _code_table(b, packed.table_width)
    if packed.rows is None and one_step and not _channels_last(packed):  # the block is the weight, flat
        steps = b.op("Mul", [table, b.const(packed.steps)])
        flat = b.op("GatherElements", [steps, b.op("Cast", [block], to=TensorProto.INT32)], axis=0)
        _to_weight_layout(b, packed, flat, flat=True)
        return
    block = b.op("Reshape", [block, b.const(np.array(packed.block, np.int64))])
    if packed.rows is not None:
        if packed.zero_row:
            zero_row = b.op("ConstantOfShape", [b.const(np.array([1, packed.block[1]], np.int64))],
                            value=_zero(packed.table_width > 8))
            block = b.op("Concat", [block, zero_row], axis=0)
        rows = b.const(packed.rows)
        if packed.rows.dtype != np.int32:
            rows = b.op("Cast", [rows], to=TensorProto.INT32)
        block = b.op("Gather", [block, rows], axis=0)
    channels = packed.block[0] if packed.rows is None else packed.rows.size
    steps = row_steps(packed)
    if not one_step and packed.rows is not None:
        steps = steps[packed.rows.astype(np.int64)]
    if _channels_last(packed):  # [K, N]: look up in the weight's layout, no float Transpose
        column = b.shared(("column", packed.table_width),
                          lambda: b.op("Unsqueeze", [table, b.const(np.array([1], np.int64))]))
        lookup = _scaled(b, column, steps.reshape(1, -1), [1, channels], one_step, packed.steps)
        index = b.op("Cast", [b.op("Transpose", [block], perm=[1, 0])], to=TensorProto.INT32)
        b.op("GatherElements", [lookup, index], axis=0)
    else:
        row = b.shared(("row", packed.table_width),
                       lambda: b.op("Unsqueeze", [table, b.const(np.array([0], np.int64))]))
        lookup = _scaled(b, row, steps.reshape(-1, 1), [channels, 1], one_step, packed.steps)
        weights = b.op("GatherElements", [lookup, b.op("Cast", [block], to=TensorProto.INT32)], axis=1)
        _to_weight_layout(b, packed, weights)


def _scaled(b: _Builder, table: str, steps: np.ndarray, expand: list[int], one_step: bool, step) -> str:
    """The table times the steps: one per channel, or one step Expanded to every channel."""
    if not one_step:
        return b.op("Mul", [table, b.const(steps.astype(np.float32))])
    return b.op("Expand", [b.op("Mul", [table, b.const(step)]), b.const(np.array(expand, np.int64))])


def _code_table(b: _Builder, width: int) -> str:
    """unzigzag(u) for u < 2^width, float32 [2^width]: stored as int8 (int16 past 8 bits), made once."""
    def build() -> str:
        codes = unzigzag(np.arange(1 << width)).astype(np.int8 if width <= 8 else np.int16)
        return b.op("Cast", [b.const(codes)], to=TensorProto.FLOAT)
    return b.shared(("codes", width), build)


def _channels_last(packed: PackedLayer) -> bool:
    """A 2-D weight whose output channels are its columns (MatMul's [K, N])."""
    return len(packed.shape) == 2 and packed.axis == 1 and packed.groups == 1


def _to_weight_layout(b: _Builder, packed: PackedLayer, channels: str, flat: bool = False) -> None:
    """Channel rows [channels, per channel] (or flat) back in the weight's layout (undo to_channels)."""
    view, perm = channel_view(packed.shape, packed.axis, packed.groups)
    n_channels = packed.block[0] if packed.rows is None else packed.rows.size
    if flat or tuple(view) != (n_channels, packed.block[1]):
        channels = b.op("Reshape", [channels, b.const(np.array(view, np.int64))])
    if perm != tuple(range(len(perm))):
        channels = b.op("Transpose", [channels], perm=list(perm))
    if tuple(view[p] for p in perm) != packed.shape:
        b.op("Reshape", [channels, b.const(np.array(packed.shape, np.int64))])


def decoder_model(layers: PackedLayer | Sequence[PackedLayer], names: Sequence[str] = ("W",),
                  opset: int = PACKED_MIN_OPSET) -> onnx.ModelProto:
    """A model with no input whose outputs, `names`, are the decoded weights of `layers`."""
    layers = [layers] if isinstance(layers, PackedLayer) else list(layers)
    nodes, initializers = decoder_nodes("p", names, layers)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(p.shape)) for n, p in zip(names, layers)]
    graph = helper.make_graph(nodes, "packed_decoder", [], outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def encode_layer(layer: WeightLayer, plan: LayerPlan) -> PackedLayer:
    """`layer`'s codes under `plan`, packed."""
    codes = layer_codes(layer, plan)
    if plan.channel_steps is not None:
        axis = plan.channel_axis % layer.values.ndim
        same_axis = layer.axis is not None and axis == layer.axis % layer.values.ndim
        return encode(codes, axis, layer.groups if same_axis else 1, plan.channel_steps)
    return encode(codes, layer.axis, layer.groups, plan.step)


def apply_packed(graph: gs.Graph, pairs: Sequence[tuple[WeightLayer, LayerPlan]]) -> list[str]:
    """Replace each layer's weight by packed arrays, decoded by one decoder per (sub)graph;
    return each layer's storage label ("packed3-5+mask": code widths 3 to 5, a bitmask index;
    see core.packing.describe)."""
    if (graph.opset or 0) < PACKED_MIN_OPSET:
        raise ModelError(f"the packed format needs opset {PACKED_MIN_OPSET} or newer (model: {graph.opset})")
    packs = [encode_layer(layer, plan) for layer, plan in pairs]
    homes: dict[int, tuple[gs.Graph, list[int]]] = {}
    for i, (layer, _) in enumerate(pairs):
        home = layer.home or graph
        homes.setdefault(id(home), (home, []))[1].append(i)
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    for home, members in homes.values():
        prefix = _fresh_prefix("p", taken)
        taken.add(prefix)
        outputs = [_detach_weight(home, pairs[i][0]) for i in members]
        nodes, initializers = decoder_nodes(prefix, [o.name for o in outputs], [packs[i] for i in members])
        decoder = gs.import_onnx(helper.make_model(
            helper.make_graph(nodes, "decoder", [], [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, None)
                                                     for o in outputs], initializers),
            opset_imports=[helper.make_opsetid("", graph.opset)]))
        by_name = {o.name: o for o in outputs}
        for node in decoder.nodes:
            for j, tensor in enumerate(node.outputs):
                if tensor.name in by_name:
                    node.outputs[j] = by_name[tensor.name]
        for output in outputs:  # the weight's shape is the consumer's to know: no value_info for it
            output.shape = None
        home.nodes[0:0] = decoder.nodes  # inputs are constants: first is always topologically valid
    return [describe(p) for p in packs]


def _fresh_prefix(prefix: str, taken: set[str]) -> str:
    """`prefix`, or `prefix_N`, such that no tensor is named it or starts with it and a slash."""
    candidate, n = prefix, 1
    while candidate in taken or any(name.startswith(candidate + "/") for name in taken):
        candidate, n = f"{prefix}_{n}", n + 1
    return candidate
