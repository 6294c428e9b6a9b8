"""BatchNormalization folded into the Conv or ConvTranspose before it, as exporters from Paddle, TensorFlow and
Keras leave them.

Inference-mode BatchNormalization is a per-channel affine map y = s·x + t with
s = scale / sqrt(var + eps) and t = B − mean·s. After a Conv it folds into the
Conv's weight and bias: W' = s[m]·W[m], b' = s·b + t (per output channel m).
Folded before compression, the codes are those of the weight the runtime
multiplies by, so onnxruntime runs one (QLinear)Conv where it ran a
Conv, a DequantizeLinear/QuantizeLinear pair and a BatchNormalization, and
fine-tuning trains one layer instead of two.

Only the main graph, and only where the fold is exact: a Conv whose weight
(and bias, if any) are initializers read by this Conv alone, whose output only
this BatchNormalization reads, and a BatchNormalization whose four parameters
are initializers that are not graph inputs (an input could override them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .io import proto_graphs
from .normalize import constants_as_initializers

FOLDABLE_TYPES = (np.float16, np.float32, np.float64)


def fold_batch_norms(model: onnx.ModelProto, scales: dict[str, np.ndarray] | None = None
                     ) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every foldable Conv→BatchNormalization pair made one Conv, and
    how many were folded (`model` itself, unchanged, when none is). Their weights and
    parameters held in Constant nodes become initializers. `scales`, when given, receives
    each folded weight's per-output-channel factor s (weight name -> s)."""
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {name: node for node in graph.node for name in node.output}
    involved = {name for norm in graph.node if norm.op_type == "BatchNormalization"
                for name in [*norm.input[1:], *getattr(producer.get(norm.input[0]), "input", [])[1:]]}
    constants_as_initializers(out, involved)
    pairs = list(_foldable_pairs(graph))
    if not pairs:
        return model, 0
    inits = {t.name: t for t in graph.initializer}
    taken = set(inits) | {v for n in graph.node for v in (*n.input, *n.output)}
    folded, unread = set(), set()
    for conv, norm in pairs:
        weight, bias, factor = _fold(conv, norm, inits)
        if scales is not None:
            scales[conv.input[1]] = factor
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(weight, conv.input[1]))
        if len(conv.input) > 2 and conv.input[2]:
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias, conv.input[2]))
        else:
            name = _fresh(f"{conv.input[1]}_folded_bias", taken)
            graph.initializer.append(numpy_helper.from_array(bias, name))
            del conv.input[2:]
            conv.input.append(name)
        unread |= {conv.output[0], *norm.input[1:5]}
        conv.output[0] = norm.output[0]
        folded.add(id(norm))
    kept = [n for n in graph.node if id(n) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread(graph, unread)
    return out, len(pairs)


def _foldable_pairs(graph: onnx.GraphProto):
    """(conv, batch_norm) of each pair `fold_batch_norms` folds."""
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[int]] = {}  # name -> ids of the nodes, in any (sub)graph, that read it
    for sub in proto_graphs(graph):
        for node in sub.node:
            for name in node.input:
                readers.setdefault(name, []).append(id(node))
    producer = {name: node for node in graph.node for name in node.output}

    def constant(name: str, reader: onnx.NodeProto) -> bool:
        tensor = inits.get(name)
        return (tensor is not None and name not in graph_inputs and readers.get(name) == [id(reader)]
                and onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type) in FOLDABLE_TYPES)

    for norm in graph.node:
        if norm.op_type != "BatchNormalization" or norm.domain not in ("", "ai.onnx") or len(norm.output) != 1:
            continue
        if any(a.name == "training_mode" and a.i for a in norm.attribute):
            continue
        conv = producer.get(norm.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or conv.domain not in ("", "ai.onnx"):
            continue
        if norm.input[0] in outputs or readers.get(norm.input[0]) != [id(norm)] or len(conv.input) < 2:
            continue
        params = norm.input[1:5]
        if len(params) != 4 or not all(n in inits and n not in graph_inputs and n not in outputs for n in params):
            continue
        if not constant(conv.input[1], conv) or (len(conv.input) > 2 and conv.input[2]
                                                 and not constant(conv.input[2], conv)):
            continue
        shape = numpy_helper.to_array(inits[conv.input[1]]).shape
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        channels = shape[0] if conv.op_type == "Conv" else shape[1] * groups
        if all(numpy_helper.to_array(inits[n]).size == channels for n in params):
            yield conv, norm


def _fold(conv: onnx.NodeProto, norm: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The folded weight and bias, computed in float64 and stored in the weight's type, and s."""
    weight = numpy_helper.to_array(inits[conv.input[1]])
    shape = weight.shape
    scale, shift, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64).reshape(-1)
                               for n in norm.input[1:5])
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    s = scale / np.sqrt(var + eps)
    bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2] else np.zeros_like(s))
    if conv.op_type == "Conv":  # weight [M, C/g, k...]
        factor = s.reshape((-1,) + (1,) * (weight.ndim - 1))
    else:  # ConvTranspose, weight [C, M/g, k...]: output channel m of group i is i·M/g + j
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        factor = s.reshape((groups, 1, -1) + (1,) * (weight.ndim - 2))
        weight = weight.reshape((groups, -1) + weight.shape[1:])
    folded = (weight.astype(np.float64) * factor).reshape(shape)
    return folded.astype(weight.dtype), (s * bias + shift - s * mean).astype(weight.dtype), s


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """The initializers and value_info among `names` (the folded BatchNormalizations'
    parameters, the Convs' old outputs) that no node of any (sub)graph or graph output reads."""
    read = {name for g in proto_graphs(graph) for node in g.node for name in node.input}
    read |= {o.name for o in graph.output}
    gone = names - read
    keep = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(info)
