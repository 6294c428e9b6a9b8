"""graph.taps: taps on the compressed layers' inputs, and the QDQ form they are written as."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.graph.taps import TAP_SUFFIX, TapQuantizer, quantize_taps, tap_layer_inputs
from onnxjpq.pipeline.compress import find_model_layers


def _model(seed: int = 0) -> onnx.ModelProto:
    """x → Conv → Relu → r; r read by a second Conv and by an Add; → Flatten → Gemm → y."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             [("W1", (8, 3, 3, 3)), ("B1", (8,)), ("W2", (8, 8, 3, 3)), ("W3", (10, 8 * 36))]]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "W3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray, exact: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _tapped(seed: int = 0):
    model = _model(seed)
    return model, *tap_layer_inputs(model, find_model_layers(model)[0])


def test_each_layer_input_gets_one_tap_that_only_the_layers_read():
    model, tapped, taps = _tapped()
    onnx.checker.check_model(tapped)
    assert taps == {f"x{TAP_SUFFIX}": ("W1",), f"r{TAP_SUFFIX}": ("W2",), f"f{TAP_SUFFIX}": ("W3",)}
    readers = {n.op_type: list(n.input) for n in tapped.graph.node}
    assert readers["Add"] == ["c2", "r"]  # the other reader keeps the tensor itself
    assert len(model.graph.node) == 6  # the input model is untouched
    x = np.random.default_rng(1).normal(size=(4, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(tapped, x), _run(model, x))


def test_a_model_without_a_layer_input_to_tap_comes_back_unchanged():
    model = _model()
    assert tap_layer_inputs(model, []) == (model, {})


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(), scale=st.floats(1e-3, 0.5), seed=st.integers(0, 2 ** 16))
def test_a_quantized_tap_holds_the_clipped_rounded_input_and_onnxruntime_fuses_nothing_away(bits, signed, scale,
                                                                                          seed):
    """The codes ⌊x/scale⌉ clipped to ±largest (0..largest unsigned), in onnxruntime's default
    optimised session too: a Clip before QuantizeLinear is dropped when it fuses the layer."""
    model, tapped, _ = _tapped(seed)
    largest = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    quantizers = [TapQuantizer(f"x{TAP_SUFFIX}", scale, largest, signed),
                  TapQuantizer(f"r{TAP_SUFFIX}", scale, largest, signed)]
    written = quantize_taps(tapped, quantizers)
    onnx.checker.check_model(written)
    assert f"f{TAP_SUFFIX}" not in {o for n in written.graph.node for o in n.output}  # a plain read again
    x = np.random.default_rng(seed).normal(size=(4, 3, 6, 6)).astype(np.float32)
    low = -largest if signed else 0

    def quantized(v):
        return np.clip(np.round(v / np.float32(scale)), low, largest) * np.float32(scale)

    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    r = np.maximum(_conv(quantized(x), w["W1"]) + w["B1"].reshape(1, -1, 1, 1), 0)
    expected = (_conv(quantized(r), w["W2"]) + r).reshape(len(x), -1) @ w["W3"].T
    for exact in (True, False):
        np.testing.assert_allclose(_run(written, x, exact), expected, rtol=1e-4, atol=2e-3)


def _conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A 3x3 convolution with padding 1, in float64."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    size = x.shape[2]
    return sum(np.einsum("ncyx,oc->noyx", padded[:, :, i:i + size, j:j + size], w[:, :, i, j])
               for i in range(3) for j in range(3))


def test_an_8_bit_unsigned_tap_needs_no_clip():
    _, tapped, _ = _tapped()
    written = quantize_taps(tapped, [TapQuantizer(f"r{TAP_SUFFIX}", 0.1, 255, False)])
    ops = [n.op_type for n in written.graph.node]
    assert ops.count("QuantizeLinear") == 1 and "Clip" not in ops
