"""graph.fold: Conv/ConvTranspose + BatchNormalization folded exactly, and only where exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.graph.fold import fold_batch_norms


def _bn_params(rng, channels: int, prefix: str = "") -> list[onnx.TensorProto]:
    arrays = (rng.uniform(0.5, 2, channels), rng.normal(size=channels), rng.normal(size=channels),
              rng.uniform(0.1, 2, channels))
    return [numpy_helper.from_array(a.astype(np.float32), prefix + n)
            for a, n in zip(arrays, ("gamma", "beta", "mean", "var"))]


def _model(op: str, in_ch: int, out_ch: int, groups: int, kernel: int, bias: bool, seed: int = 0,
           extra_nodes=(), extra_outputs=(), bn_inputs=None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    shape = (out_ch, in_ch // groups, kernel, kernel) if op == "Conv" else (in_ch, out_ch // groups, kernel, kernel)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), "W"), *_bn_params(rng, out_ch)]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=out_ch).astype(np.float32), "B"))
        inputs.append("B")
    nodes = [helper.make_node(op, inputs, ["c"], group=groups, pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", *(bn_inputs or ["gamma", "beta", "mean", "var"])], ["y"],
                              epsilon=1e-3), *extra_nodes]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["a", "b", "c", "d"]) for n in ("y", *extra_outputs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_ch, 6, 6])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion of its own
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


@settings(max_examples=25, deadline=None)
@given(op=st.sampled_from(["Conv", "ConvTranspose"]), groups=st.sampled_from([1, 2]),
       channels=st.sampled_from([2, 4, 6]), kernel=st.sampled_from([1, 3]), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_a_folded_pair_computes_what_the_pair_computed(op, groups, channels, kernel, bias, seed):
    model = _model(op, 4, channels, groups, kernel, bias, seed)
    folded, count = fold_batch_norms(model)
    onnx.checker.check_model(folded)
    assert count == 1 and [n.op_type for n in folded.graph.node] == [op]
    assert {t.name for t in folded.graph.initializer} == {"W", "B" if bias else "W_folded_bias"}
    x = np.random.default_rng(seed).normal(size=(2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-4)


def test_parameters_held_in_constant_nodes_fold_too():
    model = _model("Conv", 4, 4, 1, 3, False)
    gamma = next(t for t in model.graph.initializer if t.name == "gamma")
    model.graph.initializer.remove(gamma)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["gamma"], value=gamma))
    folded, count = fold_batch_norms(model)
    x = np.ones((1, 4, 6, 6), np.float32)
    assert count == 1 and [n.op_type for n in folded.graph.node] == ["Conv"]
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-4)


def test_pairs_where_the_fold_would_not_be_exact_are_left_alone():
    cases = {
        "the Conv's output is read elsewhere too": _model(
            "Conv", 4, 4, 1, 3, False, extra_nodes=[helper.make_node("Relu", ["c"], ["r"])], extra_outputs=["r"]),
        "the Conv's output is a graph output": _model("Conv", 4, 4, 1, 3, False, extra_outputs=["c"]),
        "the weight is read by another node": _model(
            "Conv", 4, 4, 1, 3, False, extra_nodes=[helper.make_node("Identity", ["W"], ["w_out"])],
            extra_outputs=["w_out"]),
    }
    overridable = _model("Conv", 4, 4, 1, 3, False)
    overridable.graph.input.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [4]))
    cases["a parameter is also a graph input"] = overridable
    training = _model("Conv", 4, 4, 1, 3, False)
    training.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    cases["training mode"] = training
    for reason, model in cases.items():
        folded, count = fold_batch_norms(model)
        assert count == 0 and folded is model, reason


def test_a_model_without_batch_norms_is_returned_as_it_is():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    assert fold_batch_norms(model) == (model, 0)
