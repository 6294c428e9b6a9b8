"""Rewriting weights for every op form, in every storage format, checked in onnxruntime.

The reference for each compressed model is computed here, independently of the
rewriters: the original model with each weight replaced by codes·step,
codes = sign(w)·max(1, ⌊|w|/step + ½⌋)·mask, the masks and steps (shared, or one
per output channel) coming from the plan solved for the layers `find_layers` returns.

Outputs are compared in onnxruntime with basic graph optimizations: the extended
level fuses DequantizeLinear + MatMul into MatMulNBits, which by default quantizes
the activations to int8 (see test_default_onnxruntime_session_...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from onnxjpq import OpqConfig, OutputConfig, Selection, compress_model, find_layers, solve_opq
from onnxjpq.pipeline.compress import plan_model
from onnxjpq.graph.io import with_weights
from onnxjpq.graph.opset import upgrade
from onnxjpq.graph.layers import kept_names
from onnxjpq.core.quant import to_channels
from onnxjpq.testing import laplace, make_model, run

CONFIG = OpqConfig(prune=0.5, bits=4)
ALL = Selection(min_params=0)
FORMATS = ("qdq", "float", "sparse")


@dataclass(frozen=True)
class Case:
    text: str
    weights: dict  # name -> shape of the weights to compress (Laplace values)
    inputs: dict  # name -> input shape
    extra: dict | None = None  # other initializers (biases), name -> shape

    def model(self) -> onnx.ModelProto:
        values = {name: laplace(shape, 0.1, seed=i) for i, (name, shape) in enumerate(self.weights.items())}
        values |= {name: np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
                   for name, shape in (self.extra or {}).items()}
        return make_model(self.text, values)

    def feeds(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(7)
        return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in self.inputs.items()}


CASES = {
    "conv": Case("""
agraph (float[1, 4, 6, 6] x) => (float[1, 8, 6, 6] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, W, B)
}""", {"W": (8, 4, 3, 3)}, {"x": (1, 4, 6, 6)}, {"B": (8,)}),
    "grouped_conv": Case("""
agraph (float[1, 4, 6, 6] x) => (float[1, 8, 6, 6] y) {
    y = Conv <group = 2, pads = [1, 1, 1, 1]> (x, W)
}""", {"W": (8, 2, 3, 3)}, {"x": (1, 4, 6, 6)}),
    "depthwise_conv": Case("""
agraph (float[1, 8, 6, 6] x) => (float[1, 8, 6, 6] y) {
    y = Conv <group = 8, pads = [1, 1, 1, 1]> (x, W)
}""", {"W": (8, 1, 3, 3)}, {"x": (1, 8, 6, 6)}),
    "conv_transpose": Case("""
agraph (float[1, 4, 5, 5] x) => (float[1, 6, 7, 7] y) {
    y = ConvTranspose (x, W)
}""", {"W": (4, 6, 3, 3)}, {"x": (1, 4, 5, 5)}),
    "conv_transpose_group2": Case("""
agraph (float[1, 4, 5, 5] x) => (float[1, 6, 7, 7] y) {
    y = ConvTranspose <group = 2> (x, W)
}""", {"W": (4, 3, 3, 3)}, {"x": (1, 4, 5, 5)}),
    "gemm_transb0": Case("""
agraph (float[3, 16] x) => (float[3, 8] y) {
    y = Gemm (x, W, C)
}""", {"W": (16, 8)}, {"x": (3, 16)}, {"C": (8,)}),
    "gemm_transb1": Case("""
agraph (float[3, 16] x) => (float[3, 8] y) {
    y = Gemm <transB = 1> (x, W, C)
}""", {"W": (8, 16)}, {"x": (3, 16)}, {"C": (8,)}),
    "matmul_right": Case("""
agraph (float[3, 16] x) => (float[3, 8] y) {
    y = MatMul (x, W)
}""", {"W": (16, 8)}, {"x": (3, 16)}),
    "matmul_left": Case("""
agraph (float[16, 3] x) => (float[8, 3] y) {
    y = MatMul (W, x)
}""", {"W": (8, 16)}, {"x": (16, 3)}),
    "shared_matmul": Case("""
agraph (float[3, 16] a, float[2, 16] b) => (float[3, 8] ya, float[2, 8] yb) {
    ya = MatMul (a, W)
    yb = MatMul (b, W)
}""", {"W": (16, 8)}, {"a": (3, 16), "b": (2, 16)}),
    "two_layers": Case("""
agraph (float[3, 16] x) => (float[3, 4] y) {
    h = MatMul (x, W1)
    r = Relu (h)
    y = Gemm <transB = 1> (r, W2)
}""", {"W1": (16, 32), "W2": (4, 32)}, {"x": (3, 16)}),
}


def _as_constant_node(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The same model with initializer `name` stored as a Constant node instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensor = next(t for t in out.graph.initializer if t.name == name)
    node = onnx.helper.make_node("Constant", [], [name], name=f"{name}_const", value=tensor)
    out.graph.initializer.remove(tensor)
    out.graph.node.insert(0, node)
    onnx.checker.check_model(out)
    return out


def constant_node_case() -> tuple[onnx.ModelProto, Case]:
    case = CASES["matmul_right"]
    return _as_constant_node(case.model(), "W"), case


def _models():
    """(id, model, feeds) for every op form, the Constant-node weight included."""
    for key, case in CASES.items():
        yield key, case.model(), case.feeds()
    model, case = constant_node_case()
    yield "constant_node", model, case.feeds()


MODELS = {key: (model, feeds) for key, model, feeds in _models()}


def _weight_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float tensors of `model`, from initializers and Constant nodes."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _plan(model: onnx.ModelProto, config: OpqConfig, fmt: str, int4: bool = True):
    """The layers `find_layers` returns and the masks and steps solved for them.

    plan_model is solve_opq behind the per-channel normalisation of onnxjpq.core.channels
    (with granularity="layer" the two agree: see test_layer_granularity_plan_is_solve_opq).
    """
    layers, _ = find_layers(gs.import_onnx(model), ALL)
    return layers, plan_model(model, config, ALL, OutputConfig(format=fmt, int4=int4)).by_name()


def _expected_codes(model: onnx.ModelProto, config: OpqConfig, fmt: str, int4: bool = True
                    ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per weight name: (codes, step, ties) from the plan's masks and steps.

    codes = sign(w)·max(1, ⌊|w|/step + ½⌋)·mask (no max(1, ·) where the plan does not
    keep survivors); `step` is the shared step, or the channel steps shaped to broadcast.
    `ties` marks weights with |w|/step within 1e-6 of a half-integer: float32 and float64
    arithmetic may round those either way, and either code is accepted.
    """
    layers, plan = _plan(model, config, fmt, int4)
    expected = {}
    for layer in layers:
        p = plan[layer.name]
        step = np.asarray(p.steps_for(layer.values.shape), np.float64)
        ratio = np.abs(layer.values.astype(np.float64)) / np.where(step > 0, step, 1.0)
        q = np.floor(ratio + 0.5)
        if p.keep_survivors:
            q = np.maximum(1, q)
        codes = (np.sign(layer.values) * q * p.mask * (step > 0)).astype(np.int64)
        ties = p.mask & (np.abs(ratio - np.floor(ratio) - 0.5) < 1e-6)
        expected[layer.name] = codes, step, ties
    return expected


def _assert_codes_match(stored: np.ndarray, codes: np.ndarray, ties: np.ndarray) -> None:
    # The solver's step sits on the rounding boundary of (at most) one weight, the
    # largest of the channel that sets the bit budget; any other tie would be suspicious.
    assert ties.sum() <= 2
    stored = stored.astype(np.int64)
    np.testing.assert_array_equal(stored[~ties], codes[~ties])
    assert np.all(np.abs(stored[ties] - codes[ties]) <= 1)
    assert np.all(np.sign(stored[ties]) == np.sign(codes[ties]))


def _reference(model: onnx.ModelProto, expected, stored: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The original model with every weight replaced by its expected codes·step.

    At rounding ties the stored code is used (after `_assert_codes_match` accepted it).
    """
    new = {}
    for name, (codes, step, ties) in expected.items():
        _assert_codes_match(stored[name], codes, ties)
        codes = np.where(ties, stored[name], codes)
        new[name] = codes.astype(np.float32) * step.astype(np.float32)
    return with_weights(model, new)


def _stored_codes(out: onnx.ModelProto, expected) -> dict[str, np.ndarray]:
    """The codes the output model holds: DequantizeLinear inputs, or float values / step."""
    dq = _dequantize_linear_inputs(out)
    if dq:
        return {name: codes.astype(np.int64) for name, (codes, *_) in dq.items()}
    values = _weight_values(out)
    return {name: np.round(values[name] / np.where(step > 0, step, 1.0)).astype(np.int64)
            for name, (_, step, _) in expected.items()}


def _dequantize_linear_inputs(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Output name of each DequantizeLinear -> (integer codes, scale, zero point, axis), dense or sparse."""
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for sparse in model.graph.sparse_initializer:
        dense = np.zeros(tuple(sparse.dims), numpy_helper.to_array(sparse.values).dtype)
        dense.ravel()[numpy_helper.to_array(sparse.indices)] = numpy_helper.to_array(sparse.values)
        tensors[sparse.values.name] = dense
    found = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            found[node.output[0]] = (tensors[node.input[0]], tensors[node.input[1]], tensors[node.input[2]], axis)
    return found


def _dequantize(codes: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """What DequantizeLinear computes (zero point 0), per tensor or along `axis`."""
    if scale.ndim:
        view = [1] * codes.ndim
        view[axis] = -1
        scale = scale.reshape(view)
    return codes.astype(np.float32) * scale.astype(np.float32)


def _compress(model, fmt, config=CONFIG, selection=ALL, int4=True):
    return compress_model(model, config, selection, OutputConfig(format=fmt, int4=int4))


def _run_exact(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    """Run with onnxruntime's basic graph optimizations only.

    The extended level fuses DequantizeLinear + MatMul into MatMulNBits, which by
    default computes with int8-quantized activations (see
    test_default_onnxruntime_session_stays_within_one_percent_of_the_reference).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_outputs_close(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> None:
    for x, y in zip(_run_exact(a, feeds), _run_exact(b, feeds), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max()))


# ------------------------------------------------------------ every op form, every format


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", list(MODELS))
def test_compressed_model_runs_like_the_dequantized_reference(key, fmt):
    model, feeds = MODELS[key]
    out, report = _compress(model, fmt)
    onnx.checker.check_model(out, full_check=True)
    expected = _expected_codes(model, CONFIG, fmt)
    _assert_outputs_close(out, _reference(model, expected, _stored_codes(out, expected)), feeds)
    assert {row["name"] for row in report["layers"]} == set(expected)


@pytest.mark.parametrize("key", ["matmul_right", "gemm_transb0", "two_layers", "conv"])
def test_default_onnxruntime_session_stays_within_one_percent_of_the_reference(key):
    # onnxruntime's default session may fuse DequantizeLinear + MatMul into
    # MatMulNBits (accuracy_level 4: int8 activations), so it is not exact.
    model, feeds = MODELS[key]
    out, _ = _compress(model, "qdq")
    expected = _expected_codes(model, CONFIG, "qdq")
    reference = _reference(model, expected, _stored_codes(out, expected))
    for x, y in zip(run(out, feeds), _run_exact(reference, feeds), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-2 * float(np.abs(y).max()))


@pytest.mark.parametrize("fmt", ["qdq", "sparse"])
@pytest.mark.parametrize("key", list(MODELS))
def test_dequantize_linear_holds_the_expected_codes_and_step(key, fmt):
    model, _ = MODELS[key]
    out, _ = _compress(model, fmt)
    stored = _dequantize_linear_inputs(out)
    expected = _expected_codes(model, CONFIG, fmt)
    assert set(stored) == set(expected)
    for name, (codes, step, ties) in expected.items():
        got_codes, scale, zero_point, axis = stored[name]
        _assert_codes_match(got_codes, codes, ties)
        np.testing.assert_allclose(_dequantize(np.ones_like(got_codes), scale, axis),
                                   np.broadcast_to(step, codes.shape), rtol=1e-7)
        assert np.all(zero_point == 0)


@pytest.mark.parametrize("key", list(MODELS))
def test_float_format_stores_multiples_of_the_step(key):
    model, _ = MODELS[key]
    out, _ = _compress(model, "float")
    values = _weight_values(out)
    assert not any(node.op_type == "DequantizeLinear" for node in out.graph.node)
    expected = _expected_codes(model, CONFIG, "float")
    stored = _stored_codes(out, expected)
    for name, (codes, step, ties) in expected.items():
        _assert_codes_match(stored[name], codes, ties)
        np.testing.assert_array_equal(values[name], stored[name].astype(np.float32) * step.astype(np.float32))


@pytest.mark.parametrize("key", list(MODELS))
def test_masks_prune_half_of_each_model_by_magnitude(key):
    model, _ = MODELS[key]
    expected = _expected_codes(model, CONFIG, "qdq")
    original = _weight_values(model)
    sizes = sum(codes.size for codes, _, _ in expected.values())
    zeros = sum(int((codes == 0).sum()) for codes, _, _ in expected.values())
    assert zeros == round(0.5 * sizes)
    for name, (codes, _, _) in expected.items():
        w = np.abs(original[name])
        if (codes == 0).any() and (codes != 0).any():
            assert w[codes == 0].max() <= w[codes != 0].min()


def test_conv_transpose_group2_channels_follow_the_output_channels():
    # W[c, m] of group g = c // (C/g) feeds output channel g·(M/g) + m.
    c_in, m_per_group, groups = 4, 3, 2
    w = np.empty((c_in, m_per_group, 2, 2), np.float32)
    for c in range(c_in):
        for m in range(m_per_group):
            w[c, m] = (c // (c_in // groups)) * m_per_group + m
    rows = to_channels(w, axis=1, groups=groups)
    assert rows.shape == (groups * m_per_group, (c_in // groups) * 4)
    for channel, row in enumerate(rows):
        assert np.all(row == channel)


@pytest.mark.parametrize("key", list(MODELS))
def test_channel_granularity_dequantizes_along_the_output_channel_axis(key):
    model, feeds = MODELS[key]
    config = OpqConfig(prune=0.5, bits=4, granularity="channel")
    out, _ = _compress(model, "qdq", config)
    layers, _ = find_layers(gs.import_onnx(model), ALL)
    stored = _dequantize_linear_inputs(out)
    for layer in layers:
        _, scale, zero_point, axis = stored[layer.name]
        if layer.groups > 1:  # a grouped ConvTranspose's channels are not one axis: shared step
            assert scale.ndim == 0
            continue
        assert axis == layer.axis % layer.values.ndim
        assert scale.shape == zero_point.shape == (layer.values.shape[axis],)
    expected = _expected_codes(model, config, "qdq")
    _assert_outputs_close(out, _reference(model, expected, _stored_codes(out, expected)), feeds)


def test_auto_granularity_gives_per_channel_steps_only_to_a_layer_with_an_outlier_channel():
    w1, w2 = laplace((16, 32), 0.1, seed=1), laplace((32, 4), 0.1, seed=2)
    w1[:, 5] *= 40  # one output channel 40x wider than the others
    model = make_model("""
agraph (float[3, 16] x) => (float[3, 4] y) {
    h = MatMul (x, W1)
    r = Relu (h)
    y = MatMul (r, W2)
}""", {"W1": w1, "W2": w2})
    out, report = _compress(model, "qdq")
    stored = _dequantize_linear_inputs(out)
    assert stored["W1"][1].shape == (32,) and stored["W1"][3] == 1
    assert stored["W2"][1].ndim == 0
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["W1"]["per_channel_steps"] and not rows["W2"]["per_channel_steps"]
    expected = _expected_codes(model, CONFIG, "qdq")
    _assert_outputs_close(out, _reference(model, expected, _stored_codes(out, expected)),
                          CASES["two_layers"].feeds())


@pytest.mark.parametrize("key", ["conv", "gemm_transb0", "two_layers", "conv_transpose_group2"])
def test_layer_granularity_plan_is_solve_opq(key):
    model, _ = MODELS[key]
    config = OpqConfig(prune=0.5, bits=4, granularity="layer")
    layers, plan = _plan(model, config, "qdq")
    direct = solve_opq(layers, config, kept_names(layers, ALL)).by_name()
    for layer in layers:
        np.testing.assert_array_equal(plan[layer.name].mask, direct[layer.name].mask)
        assert plan[layer.name].step == direct[layer.name].step
        assert plan[layer.name].channel_steps is None


# ----------------------------------------------------------------------- channel axes


def _layer(model, name="W"):
    layers, _ = find_layers(gs.import_onnx(model), ALL)
    return next(l for l in layers if l.name == name)


@pytest.mark.parametrize("key, axis, groups", [
    ("conv", 0, 1),
    ("grouped_conv", 0, 1),
    ("depthwise_conv", 0, 1),
    ("conv_transpose", 1, 1),
    ("conv_transpose_group2", 1, 2),
    ("gemm_transb0", 1, 1),
    ("gemm_transb1", 0, 1),
    ("matmul_right", 1, 1),
    ("matmul_left", 0, 1),
    ("shared_matmul", 1, 1),
    ("constant_node", 1, 1),
])
def test_find_layers_reports_the_output_channel_axis(key, axis, groups):
    layer = _layer(MODELS[key][0])
    assert (layer.axis, layer.groups) == (axis, groups)


def test_gemm_transb_axis_is_zero():
    assert _layer(MODELS["gemm_transb1"][0]).axis == 0


def test_gemm_without_transb_axis_is_one():
    assert _layer(MODELS["gemm_transb0"][0]).axis == 1


def test_matmul_rank3_weight_axis_is_the_last():
    model = make_model("""
agraph (float[2, 3, 16] x) => (float[2, 3, 8] y) {
    y = MatMul (x, W)
}""", {"W": laplace((2, 16, 8))})
    assert _layer(model).axis == 2


def test_gemm_with_the_weight_as_a_transposed_a_has_axis_one():
    model = make_model("""
agraph (float[16, 3] x) => (float[8, 3] y) {
    y = Gemm <transA = 1> (W, x)
}""", {"W": laplace((16, 8))})
    assert _layer(model).axis == 1


# ------------------------------------------------------------------ graph structure


def test_shared_weight_becomes_one_dequantize_linear_feeding_both_matmuls():
    out, _ = _compress(MODELS["shared_matmul"][0], "qdq")
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 1
    consumers = [n for n in out.graph.node if dq[0].output[0] in n.input]
    assert [n.op_type for n in consumers] == ["MatMul", "MatMul"]
    assert "W" not in {t.name for t in out.graph.initializer}


def test_constant_node_weight_is_replaced_by_dequantize_linear():
    out, report = _compress(MODELS["constant_node"][0], "qdq")
    assert not any(n.op_type == "Constant" for n in out.graph.node)
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert [n.output[0] for n in dq] == ["W"]
    assert [row["name"] for row in report["layers"]] == ["W"]


def test_constant_node_weight_in_float_format_keeps_a_constant_node():
    out, _ = _compress(MODELS["constant_node"][0], "float")
    constants = [n for n in out.graph.node if n.op_type == "Constant"]
    assert [n.output[0] for n in constants] == ["W"]
    values = numpy_helper.to_array(constants[0].attribute[0].t)
    assert np.mean(values == 0) == pytest.approx(0.5, abs=1 / values.size)


@pytest.mark.parametrize("key, bias", [("conv", "B"), ("gemm_transb0", "C"), ("gemm_transb1", "C")])
@pytest.mark.parametrize("fmt", FORMATS)
def test_biases_are_not_compressed(key, bias, fmt):
    model, _ = MODELS[key]
    out, report = _compress(model, fmt)
    assert bias not in {row["name"] for row in report["layers"]}
    np.testing.assert_array_equal(_weight_values(out)[bias], _weight_values(model)[bias])
    assert not any(bias in n.output for n in out.graph.node if n.op_type == "DequantizeLinear")


def test_weight_also_feeding_an_add_is_skipped_with_a_reason():
    model = make_model("""
agraph (float[8, 8] x) => (float[8, 8] y, float[8, 4] z) {
    h = MatMul (x, W)
    y = Add (h, W)
    z = MatMul (x, V)
}""", {"W": laplace((8, 8), seed=1), "V": laplace((8, 4), seed=2)})
    out, report = _compress(model, "qdq")
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "also feeds Add" in skipped["W"]
    assert [row["name"] for row in report["layers"]] == ["V"]
    np.testing.assert_array_equal(_weight_values(out)["W"], _weight_values(model)["W"])


def test_sparse_format_moves_very_sparse_codes_to_sparse_initializers():
    model, feeds = MODELS["matmul_right"]
    config = OpqConfig(prune=0.95, bits=4)
    out, _ = _compress(model, "sparse", config)
    onnx.checker.check_model(out)
    assert [s.values.name for s in out.graph.sparse_initializer] == ["W_quantized"]
    assert "W_quantized" not in {t.name for t in out.graph.initializer}
    expected = _expected_codes(model, config, "sparse")
    _assert_outputs_close(out, _reference(model, expected, _stored_codes(out, expected)), feeds)


# ------------------------------------------------------------------ int4 and opsets


def _quantized_types(model: onnx.ModelProto) -> set[int]:
    return {t.data_type for t in model.graph.initializer if t.name.endswith("_quantized")}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("key", ["conv", "matmul_right", "conv_transpose_group2", "two_layers"])
def test_low_bits_store_int4_and_upgrade_the_opset_to_21(key):
    model, feeds = MODELS[key]
    out, report = _compress(model, "qdq", OpqConfig(prune=0.5, bits=3))
    assert _opset(model) == 17
    assert _opset(out) == 21
    assert out.ir_version >= 10
    assert _quantized_types(out) == {TensorProto.INT4}
    assert {row["container"] for row in report["layers"]} == {"int4"}
    zero_points = [t for t in out.graph.initializer if t.name.endswith("_zero_point")]
    assert {t.data_type for t in zero_points} == {TensorProto.INT4}
    assert any("opset upgraded from 17 to 21" in note for note in report["settings"]["notes"])
    expected = _expected_codes(model, OpqConfig(prune=0.5, bits=3), "qdq")
    assert max(int(np.abs(codes).max()) for codes, _, _ in expected.values()) <= 7
    _assert_outputs_close(out, _reference(model, expected, _stored_codes(out, expected)), feeds)


def test_four_bits_on_one_layer_needs_int8_codes():
    # Packed width 4 on average with every code in [-7, 7] would need every channel's
    # largest code in 4..7; a Laplace layer's small channels cannot, so the layer goes int8.
    model, _ = MODELS["conv"]
    out, report = _compress(model, "qdq")
    assert report["totals"]["avg_bits"] == pytest.approx(4, abs=0.05)
    assert _quantized_types(out) == {TensorProto.INT8}
    assert _opset(out) == 17


@pytest.mark.parametrize("key", ["conv", "matmul_right", "two_layers"])
def test_no_int4_stores_only_int8(key):
    model, _ = MODELS[key]
    out, report = _compress(model, "qdq", OpqConfig(prune=0.5, bits=3), int4=False)
    assert _quantized_types(out) == {TensorProto.INT8}
    assert {row["container"] for row in report["layers"]} == {"int8"}
    assert _opset(out) == _opset(model)


def test_eight_bits_store_int8_without_an_opset_upgrade():
    model, _ = MODELS["conv"]
    out, _ = _compress(model, "qdq", OpqConfig(prune=0.5, bits=8))
    assert _quantized_types(out) == {TensorProto.INT8}
    assert _opset(out) == 17


@pytest.mark.parametrize("fmt, int4", [("qdq", False), ("float", True), ("sparse", True)])
def test_opset_ir_version_and_producer_are_kept_without_an_upgrade(fmt, int4):
    model, _ = MODELS["two_layers"]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.producer_name, model.producer_version, model.model_version = "unit-test", "1.2.3", 7
    out, _ = _compress(model, fmt, int4=int4)
    assert _opset(out) == 17
    assert out.ir_version == model.ir_version == 8
    assert (out.producer_name, out.producer_version, out.model_version) == ("unit-test", "1.2.3", 7)


def test_producer_is_kept_through_an_int4_opset_upgrade():
    model, _ = MODELS["two_layers"]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.producer_name, model.producer_version = "unit-test", "1.2.3"
    out, _ = _compress(model, "qdq")
    assert _opset(out) == 21
    assert (out.producer_name, out.producer_version) == ("unit-test", "1.2.3")



def test_an_opset_upgrade_adds_no_shape_annotations_the_input_lacked():
    model, _ = MODELS["two_layers"]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    hidden = model.graph.node[0].output[0]  # one the input declares is kept
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(hidden, TensorProto.FLOAT, None))
    assert [v.name for v in upgrade(model, 21).graph.value_info] == [hidden]
    out, _ = _compress(model, "qdq")
    assert _opset(out) == 21 and [v.name for v in out.graph.value_info if v.name == hidden] == [hidden]


# ------------------------------------------------------------------------- metadata


def test_metadata_props_hold_settings_and_totals():
    model, _ = MODELS["two_layers"]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    onnx.helper.set_model_props(model, {"author": "unit-test"})
    out, report = _compress(model, "qdq")
    props = {p.key: p.value for p in out.metadata_props}
    assert props["author"] == "unit-test"
    settings = json.loads(props["onnxjpq.settings"])
    assert settings["config"]["prune"] == 0.5 and settings["config"]["bits"] == 4
    assert settings["output"]["format"] == "qdq"
    totals = json.loads(props["onnxjpq.totals"])
    assert totals["prune_ratio"] == pytest.approx(report["totals"]["prune_ratio"])
    assert totals["avg_bits"] == pytest.approx(report["totals"]["avg_bits"])
    assert totals["params"] == 16 * 32 + 4 * 32


def test_first_and_last_asked_by_name_are_kept_even_when_they_dominate():
    """`--keep auto` spares a layer holding more than KEEP_SHARE of the weights; `--keep last` is the
    user's word and holds it at 8 bits whatever its share (it was dropped silently)."""
    import onnx_graphsurgeon as gs

    from onnxjpq.graph.layers import find_layers
    from onnxjpq.testing import laplace, make_model

    text = ("agraph (float[1, 16] x) => (float[1, 512] y) "
            "{ a = MatMul (x, W1) \n b = MatMul (a, W2) \n y = MatMul (b, W3) }")
    model = make_model(text, {"W1": laplace((16, 16)), "W2": laplace((16, 16), seed=1),
                              "W3": laplace((16, 512), seed=2)})
    layers, _ = find_layers(gs.import_onnx(model), Selection(min_params=0))
    assert kept_names(layers, Selection(min_params=0)) == {"W1"}  # auto: W3 holds 94 % of the weights
    assert kept_names(layers, Selection(min_params=0, keep=("last",))) == {"W3"}
    assert kept_names(layers, Selection(min_params=0, keep=("last",)), budget=True) == {"W3"}
    assert kept_names(layers, Selection(min_params=0), budget=True) == frozenset()
