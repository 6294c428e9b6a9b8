"""Compile an ONNX graph (and its subgraphs) into registry calls, refusing up front what cannot run.

`compile_graph` decodes every node's attributes once (strings to str, tensors
to numpy, subgraphs to compiled `Graph`s), checks each op against the registry
and each tensor type against torch's dtypes, and raises one `ModelError`
naming everything it cannot run, so nothing fails halfway through training.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import AttributeProto, numpy_helper

from ...errors import ModelError
from .dtypes import NARROW_INTS, tensor_of, to_torch, unsupported_type, widened
from .registry import OPS, Node, OpSpec

_DEFAULT_DOMAINS = ("", "ai.onnx")


class Graph:
    """A compiled graph: nodes with their specs, constant values, input and output names."""

    def __init__(self, nodes: list[tuple[Node, OpSpec]], constants: dict[str, torch.Tensor],
                 input_names: list[str], output_names: list[str]):
        self.nodes = nodes
        self.constants = constants
        self.input_names = input_names
        self.output_names = output_names

    def run(self, env: dict[str, torch.Tensor], transforms: dict | None = None) -> None:
        """Run the nodes, writing their outputs into `env` (which holds the inputs and constants);
        `transforms` (tensor name -> function) replace a tensor by its function as it is made."""
        for node, spec in self.nodes:
            args = [env[name] if name else None for name in node.inputs]
            if not spec.narrow:
                args = [widened(a) if a is not None and a.dtype in NARROW_INTS else a for a in args]
            outs = spec.run(node, *args, scope=env) if spec.scoped else spec.run(node, *args)
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = transforms[name](value) if transforms and name in transforms else value

    def __call__(self, scope: dict[str, torch.Tensor], *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run as a subgraph: `scope` holds the enclosing graph's values, `inputs` the subgraph's."""
        env = dict(scope)
        env.update(self.constants)
        env.update(zip(self.input_names, inputs))
        self.run(env)
        return [env[name] for name in self.output_names]


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node, whichever attribute holds it."""
    attr = node.attribute[0]
    if attr.name == "sparse_value":
        return sparse_to_dense(attr.sparse_tensor)
    value = onnx.helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    dtype = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}.get(attr.name, object)
    return np.array(value, dtype)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, tuple(sparse.dims))
    dense[flat] = values
    return dense.reshape(tuple(sparse.dims))


def compile_graph(graph: onnx.GraphProto, opset: int) -> Graph:
    """The compiled graph, or a ModelError listing every op and type torch cannot run."""
    problems: dict[str, set[str]] = {"ops": set(), "other": set()}
    compiled = _compile(graph, opset, problems)
    if problems["ops"] or problems["other"]:
        ops = sorted(problems["ops"])
        parts = [f"op{'s' if len(ops) > 1 else ''} {', '.join(ops)}"] if ops else []
        raise ModelError(f"fine-tuning cannot run {'; '.join(parts + sorted(problems['other']))}")
    return compiled


def _compile(graph: onnx.GraphProto, opset: int, problems: dict[str, set[str]]) -> Graph:
    _check_types(graph, problems)
    constants: dict[str, torch.Tensor] = {}
    for t in graph.initializer:
        constants[t.name] = t
    for s in graph.sparse_initializer:
        constants[s.values.name] = sparse_to_dense(s)
    nodes = []
    for proto in graph.node:
        if proto.op_type == "Constant" and proto.domain in _DEFAULT_DOMAINS:
            value = _constant(proto, problems)
            if value is not None:
                constants[proto.output[0]] = value
            continue
        node = _node(proto, opset, problems)
        spec = OPS.get(proto.op_type) if proto.domain in _DEFAULT_DOMAINS else None
        if spec is None:
            problems["ops"].add(proto.op_type if proto.domain in _DEFAULT_DOMAINS
                                else f"{proto.domain}.{proto.op_type}")
            continue
        reason = spec.check(node) if spec.check else None
        if reason:
            problems["other"].add(reason)
        nodes.append((node, spec))
    if problems["ops"] or problems["other"]:
        return Graph(nodes, {}, [], [])
    tensors = {name: tensor_of(v) if isinstance(v, onnx.TensorProto) else to_torch(v)
               for name, v in constants.items()}
    inputs = [i.name for i in graph.input if i.name not in tensors]
    return Graph(nodes, tensors, inputs, [o.name for o in graph.output])


def _constant(proto: onnx.NodeProto, problems) -> np.ndarray | None:
    attr = proto.attribute[0]
    reason = unsupported_type(attr.t.data_type) if attr.name == "value" else None
    if reason or attr.name in ("value_string", "value_strings"):
        problems["other"].add(reason or unsupported_type(onnx.TensorProto.STRING))
        return None
    return constant_value(proto)


def _check_types(graph: onnx.GraphProto, problems) -> None:
    typed = [*graph.input, *graph.output, *graph.value_info]
    for value in typed:
        kind = value.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            problems["other"].add(f"{kind.removesuffix('_type')} values (the bridge runs tensors only)")
        elif kind and (reason := unsupported_type(value.type.tensor_type.elem_type)):
            problems["other"].add(reason)
    for t in graph.initializer:
        if reason := unsupported_type(t.data_type):
            problems["other"].add(reason)


def _node(proto: onnx.NodeProto, opset: int, problems) -> Node:
    attrs = {}
    for a in proto.attribute:
        if a.type == AttributeProto.GRAPH:
            attrs[a.name] = _compile(a.g, opset, problems)
        elif a.type == AttributeProto.GRAPHS:
            attrs[a.name] = [_compile(g, opset, problems) for g in a.graphs]
        else:
            attrs[a.name] = _decode(a)
    return Node(proto.op_type, tuple(proto.input), tuple(proto.output), attrs, opset)


def _decode(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attr.type == AttributeProto.TENSORS:
        return [numpy_helper.to_array(v) for v in value]
    if attr.type == AttributeProto.SPARSE_TENSOR:
        return sparse_to_dense(value)
    if attr.type == AttributeProto.STRING:
        return value.decode()
    if attr.type == AttributeProto.STRINGS:
        return [v.decode() for v in value]
    return list(value) if attr.type in (AttributeProto.INTS, AttributeProto.FLOATS) else value


def model_opset(model: onnx.ModelProto) -> int:
    versions = {o.domain: o.version for o in model.opset_import}
    return versions.get("", versions.get("ai.onnx", 1))
