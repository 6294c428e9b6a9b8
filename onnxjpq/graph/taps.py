"""Taps on the inputs of the compressed layers: where DJPQ quantizes activations.

A tap is an Identity node between a tensor and the Conv, ConvTranspose, Gemm
or MatMul nodes of the compressed layers that read it (other readers keep the
tensor itself), so a quantizer placed on the tap's output acts on exactly
those layers' inputs, in the torch bridge while training and in the written
model afterwards, where `quantize_taps` replaces each tap by
QuantizeLinear → DequantizeLinear → Clip. The Clip comes after the pair: a
Clip before QuantizeLinear is fused away by onnxruntime when it folds the
layer into QLinearConv/QGemm (0.54 on lenet5's logits at 7 bits), and as
rounding is monotone, clipping the dequantized values at ±m·scale is the same
as clipping the input. Main graph only: a layer used inside an If/Loop/Scan
body keeps float inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

TAPPED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TAP_SUFFIX = "_djpq_input"
MIN_OPSET = 13  # Clip with input bounds (11) and QuantizeLinear of the ONNX standard QDQ form (13)


@dataclass(frozen=True)
class TapQuantizer:
    """What one tap becomes: codes clip(⌊x/scale⌉, −largest, largest) in int8 when signed,
    else clip(⌊x/scale⌉, 0, largest) in uint8."""

    tap: str
    scale: float
    largest: int
    signed: bool

    def bounds(self) -> tuple[np.float32, np.float32]:
        high = np.float32(self.largest) * np.float32(self.scale)
        return (-high if self.signed else np.float32(0)), high

    def saturates(self) -> bool:
        """Whether the code type's own range is the clip (uint8 at 255), so no Clip is needed."""
        return not self.signed and self.largest == 255


def tap_layer_inputs(model: onnx.ModelProto, layers) -> tuple[onnx.ModelProto, dict[str, tuple[str, ...]]]:
    """A copy of `model` with a tap on each compressed layer's data input, and per tap the
    names of the layers that read it (`model` itself when there is nothing to tap)."""
    readers: dict[str, list[tuple[str, int]]] = {}  # node output -> (layer, data input slot)
    for layer in layers:
        for node, slot in layer.uses:
            if node.op in TAPPED_OPS and slot in (0, 1) and node.outputs:
                readers.setdefault(node.outputs[0].name, []).append((layer.name, 1 - slot))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constant = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    taps: dict[str, list[str]] = {}
    first_reader: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name, slot in readers.get(node.output[0] if node.output else "", []):
            data = node.input[slot] if len(node.input) > slot else ""
            if not data or data in constant or data.endswith(TAP_SUFFIX):
                continue
            tap = f"{data}{TAP_SUFFIX}"
            node.input[slot] = tap
            first_reader.setdefault(data, index)
            if name not in taps.setdefault(tap, []):
                taps[tap].append(name)
    if not taps:
        return model, {}
    nodes = list(graph.node)
    for data, index in sorted(first_reader.items(), key=lambda item: -item[1]):
        nodes.insert(index, helper.make_node("Identity", [data], [f"{data}{TAP_SUFFIX}"],
                                             name=f"{data}{TAP_SUFFIX}"))
    del graph.node[:]
    graph.node.extend(nodes)
    return out, {tap: tuple(names) for tap, names in taps.items()}


def quantize_taps(model: onnx.ModelProto, quantizers: list[TapQuantizer]) -> onnx.ModelProto:
    """A copy of `model` with each tap of `quantizers` replaced by QuantizeLinear →
    DequantizeLinear → Clip; taps without a quantizer become plain reads again."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_tap = {q.tap: q for q in quantizers}
    nodes, renamed = [], {}
    for node in graph.node:
        if node.op_type != "Identity" or not node.output[0].endswith(TAP_SUFFIX):
            nodes.append(node)
            continue
        q = by_tap.get(node.output[0])
        if q is None:
            renamed[node.output[0]] = node.input[0]
            continue
        base = node.output[0]
        low, high = q.bounds()
        zero = np.zeros((), np.int8 if q.signed else np.uint8)
        graph.initializer.extend([numpy_helper.from_array(np.array(q.scale, np.float32), f"{base}_scale"),
                                  numpy_helper.from_array(zero, f"{base}_zero_point")])
        dequantized = base if q.saturates() else f"{base}_dequantized"
        nodes += [helper.make_node("QuantizeLinear", [node.input[0], f"{base}_scale", f"{base}_zero_point"],
                                   [f"{base}_codes"], name=f"{base}_quantize"),
                  helper.make_node("DequantizeLinear", [f"{base}_codes", f"{base}_scale", f"{base}_zero_point"],
                                   [dequantized], name=f"{base}_dequantize")]
        if not q.saturates():
            graph.initializer.extend([numpy_helper.from_array(np.array(low, np.float32), f"{base}_low"),
                                      numpy_helper.from_array(np.array(high, np.float32), f"{base}_high")])
            nodes.append(helper.make_node("Clip", [dequantized, f"{base}_low", f"{base}_high"], [base],
                                          name=f"{base}_clip"))
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(nodes)
    return out
