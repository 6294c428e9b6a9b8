"""`onnxjpq unpack`: a packed model (`compress --format packed`) with its weights as float or QDQ.

The packed decoders are the nodes whose inputs are all constants and that read
or write a decoder tensor (`rewrite.packed` names them `p/N`, `p_1/N`, ...).
onnxruntime runs them once (no graph optimization: the values are those the
runtime folds at load, bit for bit); each weight becomes a float initializer.
For QDQ, each weight's step is read from its lookup table (T[u = 2] is one
step: unzigzag(2) = 1) and its codes are weight / step, so the QDQ rewriter
writes what `compress --format qdq` writes for the same codes and steps.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..core.plan import CompressionPlan, LayerPlan
from ..errors import ModelError
from ..graph.io import (check_model_valid, file_bytes, load_external, load_model_lazy, model_inputs, proto_graphs,
                        save_model)
from ..graph.outputs import check_outputs
from ..graph.layers import Selection
from ..pipeline.compress import OutputConfig, apply_plan, find_graph_layers

DECODER_TENSOR = re.compile(r"^p(_\d+)?/\d+$")
_LAYOUT_OPS = ("Reshape", "Transpose")


def decoder_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of `graph`'s packed decoder (not its subgraphs'), in graph order."""
    constant = {t.name for t in graph.initializer}
    found = []
    for node in graph.node:
        names = [*node.input, *node.output]
        if all(i in constant for i in node.input if i) and any(DECODER_TENSOR.match(n) for n in names):
            found.append(node)
            constant.update(node.output)
    return found


def unpack_model(model: onnx.ModelProto, fmt: str = "float") -> tuple[onnx.ModelProto, dict]:
    """`model` with every packed weight decoded; `fmt` "float" or "qdq". Returns the model and
    {weight name: (float values, steps)} of the weights decoded."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    decoded = {}
    for graph in proto_graphs(out.graph):
        decoded.update(_unpack_graph(graph, out))
    if not decoded:
        raise ModelError("no packed weight found: the model was not written by `compress --format packed`")
    if fmt == "qdq":
        out = _as_qdq(out, decoded)
    return out, decoded


def _unpack_graph(graph: onnx.GraphProto, model: onnx.ModelProto) -> dict:
    nodes = decoder_nodes(graph)
    if not nodes:
        return {}
    read_by_model = {i for g in proto_graphs(graph) for n in g.node if n not in nodes for i in n.input}
    weights = [o for n in nodes for o in n.output if o in read_by_model | {v.name for v in graph.output}]
    tables = {w: _table_of(w, nodes) for w in weights}
    wanted = list(dict.fromkeys(weights + [t[0] for t in tables.values() if t is not None]))
    inputs = {i for n in nodes for i in n.input}
    initializers = [t for t in graph.initializer if t.name in inputs]
    probe = helper.make_model(
        helper.make_graph(nodes, "decoder", [], [helper.make_empty_tensor_value_info(n) for n in wanted],
                          initializers), opset_imports=model.opset_import, ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    values = dict(zip(wanted, ort.InferenceSession(probe.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"]).run(wanted, {})))
    kept_nodes = [n for n in graph.node if n not in nodes]
    still_read = {i for g in proto_graphs(graph) for n in g.node if n not in nodes for i in n.input}
    kept_inits = [t for t in graph.initializer if t.name not in inputs or t.name in still_read]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + [numpy_helper.from_array(values[w], w) for w in weights])
    return {w: (values[w], None if tables[w] is None else _steps(values[tables[w][0]], tables[w][1]))
            for w in weights}


def _table_of(weight: str, nodes: list[onnx.NodeProto]) -> tuple[str, int] | None:
    """The lookup table a weight is read from and the axis it is read along: back through the
    weight's layout ops to its GatherElements."""
    by_output = {o: n for n in nodes for o in n.output}
    node = by_output.get(weight)
    while node is not None and node.op_type in _LAYOUT_OPS:
        node = by_output.get(node.input[0])
    if node is None or node.op_type != "GatherElements":
        return None  # an all-zero weight (ConstantOfShape)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return node.input[0], axis


def _steps(table: np.ndarray, axis: int) -> np.ndarray:
    """Each channel's step from its table: T[u = 2] is one step, unzigzag(2) = 1. A table is
    [2^t] (one step), [channels, 2^t] read along axis 1, or [2^t, N] (a MatMul's [K, N]) along 0."""
    if table.ndim == 1:
        return np.asarray(table[2], np.float32)
    return (table[:, 2] if axis == 1 else table[2, :]).astype(np.float32)


def _as_qdq(model: onnx.ModelProto, decoded: dict) -> onnx.ModelProto:
    selection = Selection(include=tuple(glob.escape(n) for n in decoded), keep=(), min_params=1, embeddings=True)
    _, layers, _ = find_graph_layers(model, selection)
    plans = []
    for layer in layers:
        values, steps = decoded[layer.name]
        plans.append(_plan(layer, values, steps))
    out, _ = apply_plan(model, CompressionPlan(tuple(plans), "unpacked"), selection, OutputConfig(format="qdq"),
                        {"notes": []})
    return out


def _plan(layer, values: np.ndarray, steps: np.ndarray) -> LayerPlan:
    """The codes and steps that give `values` back exactly."""
    if steps is None:  # every code 0
        return LayerPlan(layer.name, np.zeros(values.shape, bool), 1.0, codes=np.zeros(values.shape, np.int32))
    positive = steps[steps > 0]
    if steps.ndim == 0 or np.all(positive == positive[0]):
        step = float(positive[0]) if positive.size else 1.0
        codes = np.rint(values.astype(np.float64) / step).astype(np.int32)
        return LayerPlan(layer.name, codes != 0, step, codes=codes)
    if layer.axis is None or steps.size != values.shape[layer.axis]:
        raise ModelError(f"{layer.name}: its channel steps do not run along one axis; unpack it with --format float")
    steps = np.where(steps > 0, steps, np.median(positive)).astype(np.float32)  # all-zero channels: any step
    view = [1] * values.ndim
    view[layer.axis % values.ndim] = -1
    codes = np.rint(values.astype(np.float64) / steps.reshape(view)).astype(np.int32)
    return LayerPlan(layer.name, codes != 0, float(np.median(steps)), channel_steps=steps,
                     channel_axis=layer.axis, codes=codes)


def unpack_file(src, dst, fmt: str = "float") -> dict:
    """Unpack the packed model file `src` into `dst` (written atomically); return a summary."""
    model = load_model_lazy(src)
    check_outputs(model_inputs(src, model), [("output", dst), ("output data file", f"{os.fspath(dst)}.data")])
    check_model_valid(model, src)
    load_external(model, src)
    out, decoded = unpack_model(model, fmt)
    bytes_out = save_model(out, dst)
    return {"weights": len(decoded), "format": fmt, "bytes_in": file_bytes(src), "bytes_out": bytes_out}
