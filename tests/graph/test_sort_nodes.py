"""graph.normalize.sort_nodes: topological order restored, the given order kept where valid."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from onnxjpq.graph.normalize import sort_nodes


def _chain(length: int) -> list[onnx.NodeProto]:
    names = ["x", *[f"t{i}" for i in range(length - 1)], "y"]
    return [helper.make_node("Relu" if i % 2 else "Neg", [names[i]], [names[i + 1]]) for i in range(length)]


def _graph(nodes) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(6)))
def test_any_order_of_a_chain_is_sorted_back(order):
    nodes = _chain(6)
    graph = _graph([nodes[i] for i in order])
    assert sort_nodes(graph)
    assert [n.output[0] for n in graph.node] == [n.output[0] for n in nodes]
    onnx.checker.check_model(helper.make_model(graph))


def test_a_sorted_graph_keeps_its_order():
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Add", ["b", "a"], ["y"])]
    graph = _graph(nodes)
    before = graph.SerializeToString()
    assert sort_nodes(graph) and graph.SerializeToString() == before


def test_a_node_waits_for_what_its_subgraph_reads_from_outside():
    """The If's branches read `a`, produced after it in the given order."""
    branch = helper.make_graph([helper.make_node("Identity", ["a"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    if_node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = _graph([cond, if_node, helper.make_node("Neg", ["x"], ["a"])])
    assert sort_nodes(graph)
    assert [n.op_type for n in graph.node] == ["Constant", "Neg", "If"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], -x)


def test_a_cycle_is_left_as_it_was():
    graph = _graph([helper.make_node("Neg", ["b"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                    helper.make_node("Neg", ["x"], ["y"])])
    before = graph.SerializeToString()
    assert not sort_nodes(graph) and graph.SerializeToString() == before
