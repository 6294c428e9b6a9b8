"""A loaded model in the form the pipeline reads, with the same meaning.

onnx-graphsurgeon and the rewrites see only the main graph and its subgraphs,
so `normalize_model` (called by `io.load_model_lazy`, before any check) makes
three equivalent rewrites of the ModelProto, each only where it applies:

- local functions are inlined (`onnx.inliner.inline_local_functions`), so a
  weight used inside one is found like any other; a call to a local function
  whose domain the model does not import is refused, as onnx.checker would;
- a Constant node's `sparse_value` becomes a dense `value` (onnx-graphsurgeon
  drops sparse attributes), after onnx.checker's check of the sparse tensor;
  one whose data is external stays as it is;
- IR version 3, where every initializer must also be a graph input, becomes
  4, where it may: the rewrites add initializers that are not inputs. A model
  breaking IR 3's rule keeps its version, and onnx.checker refuses it.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import onnx
import onnx.inliner
from onnx import external_data_helper, numpy_helper

from ..errors import ModelError, first_line


def normalize_model(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """`model` with its local functions inlined, sparse Constants dense and IR 3 raised to 4
    (the same object when none applies); `name` labels the errors."""
    if model.functions:
        model = _inline(model, name)
    _densify_constants(model, name)
    if model.ir_version == 3:
        inputs = {i.name for i in model.graph.input}
        if all(t.name in inputs for t in model.graph.initializer):
            model.ir_version = 4
    return model


def _inline(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    imported = {entry.domain for entry in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    for graph in _graphs(model):
        for node in graph.node:
            if (node.domain, node.op_type) in local and node.domain not in imported:
                raise ModelError(f"{name}: node {node.name or node.op_type!r} calls local function "
                                 f"{node.domain}:{node.op_type}, but the model imports no opset for "
                                 f"domain {node.domain!r}")
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # noqa: BLE001 - the inliner raises several types for a broken function
        raise ModelError(f"{name}: its local functions cannot be inlined ({first_line(exc)})") from None


def _graphs(model: onnx.ModelProto):
    """The main graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    stack = [model.graph]
    while stack:
        graph = stack.pop(0)
        yield graph
        stack += [sub for node in graph.node for attr in node.attribute
                  for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def _densify_constants(model: onnx.ModelProto, name: str) -> None:
    for graph in _graphs(model):
        for node in graph.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            for index, attr in enumerate(node.attribute):
                if attr.name == "sparse_value" and not _external(attr.sparse_tensor):
                    dense = _dense(attr.sparse_tensor, f"{name}: Constant {node.output[0]!r}")
                    del node.attribute[index]
                    node.attribute.append(onnx.helper.make_attribute("value", dense))
                    break


def _external(sparse: onnx.SparseTensorProto) -> bool:
    return any(external_data_helper.uses_external_data(t) for t in (sparse.values, sparse.indices))


def _dense(sparse: onnx.SparseTensorProto, label: str) -> onnx.TensorProto:
    """The dense tensor of a checked sparse tensor (indices: linear, or one row of coordinates each)."""
    try:
        onnx.checker.check_sparse_tensor(sparse)
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - the checker and the reader raise several types
        raise ModelError(f"{label}: invalid sparse_value ({first_line(exc)})") from None
    dims = tuple(int(d) for d in sparse.dims)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    dense = np.zeros(math.prod(dims), values.dtype)
    dense[indices.reshape(-1)] = values
    return numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


def constants_as_initializers(model: onnx.ModelProto, names=None) -> list[str]:
    """Main-graph Constant nodes (default domain) holding a tensor, those whose output is in
    `names` (None: all), become initializers of the same name, in place; returns their names.
    onnxruntime's quantizer takes only initializers for weights, and a graph input can only
    replace an initializer."""
    graph, moved = model.graph, []
    for node in [n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                 and (names is None or n.output[0] in names)]:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if value is not None:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.node.remove(node)
            moved.append(tensor.name)
    return moved


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Put the nodes of `graph` and of each subgraph in topological order, in place, keeping
    the given order wherever it is already valid (onnxruntime's dynamic quantizer writes
    graphs onnx.checker refuses as unsorted). Returns False, leaving a graph as it was, when
    its nodes form a cycle."""
    nodes = list(graph.node)
    sorted_all = True
    for node in nodes:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                sorted_all &= sort_nodes(sub)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waits_on = [{producer[name] for name in _reads(node) if name in producer} - {i} for i, node in enumerate(nodes)]
    readers: list[list[int]] = [[] for _ in nodes]
    for i, needed in enumerate(waits_on):
        for j in needed:
            readers[j].append(i)
    pending = [len(needed) for needed in waits_on]
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in readers[i]:
            pending[k] -= 1
            if pending[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        return False
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)
    return sorted_all


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads: its inputs and what its subgraphs take from the scope around them."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            inner |= {name for n in sub.node for name in n.output}
            names |= {name for n in sub.node for name in _reads(n)} - inner
    return names
