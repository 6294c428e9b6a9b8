"""Captured layer statistics against the layer inputs read from a direct onnxruntime run.

Each model puts an op (Relu, Tanh) before the weight op, so the captured tensor
is an intermediate one; the reference statistics come from running the model
itself with that tensor added as an output and building the columns by explicit
loops (tests/unit/test_hessian.py's receptive fields for Conv).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxjpq.core.hessian import MAX_ELEMENTS, ConvGeometry
from onnxjpq.graph.layers import Selection, find_layers
from onnxjpq.runtime.capture import MAX_CHUNK_ELEMENTS, capture_pairs, capture_stats, chunk_elements
from onnxjpq.runtime.layer_view import layer_view, slot_index
from onnxjpq.runtime.data import Dataset
from onnxjpq.runtime.probe import Probe, make_template, stages
from onnxjpq.testing import laplace, make_model, run

ALL = Selection(min_params=0)


def receptive_fields(x, geo):
    """Per (sample, group, output position): the field vector, zeros outside x (explicit loops)."""
    import itertools
    r, per_group = geo.rank, x.shape[1] // geo.groups
    out = geo.output_shape(x.shape[2:])
    for n, g in itertools.product(range(x.shape[0]), range(geo.groups)):
        for pos in itertools.product(*(range(o) for o in out)):
            field = []
            for c in range(g * per_group, (g + 1) * per_group):
                for k in itertools.product(*(range(kk) for kk in geo.kernel_shape)):
                    at = [pos[i] * geo.strides[i] - geo.pads[i] + k[i] * geo.dilations[i] for i in range(r)]
                    inside = all(0 <= a < x.shape[2 + i] for i, a in enumerate(at))
                    field.append(x[(n, c) + tuple(at)] if inside else 0.0)
            yield g, np.array(field)


def intermediate(model: onnx.ModelProto, name: str, feeds: dict) -> np.ndarray:
    """The tensor `name` from a direct run of `model` with it added as an output."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return run(probe, feeds)[-1].astype(np.float64)


def captured(model: onnx.ModelProto, feeds: dict, weights: dict | None = None, index: int = 0):
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph, ALL)
    view = layer_view(layers[index], graph)
    assert not isinstance(view, str), view
    template = make_template(model, {l.name for l in layers})
    stats = capture_stats(template, [view], Dataset(feeds, None), 10**6, weights or {}, 1 << 26)
    return view, stats[view.name]


def rows_of(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def test_matmul_columns_are_the_rows_of_its_input_batch_and_sequence_flattened():
    model = make_model("""
agraph (float[3, 5, 6] x) => (float[3, 5, 4] y) {
    t = Tanh (x)
    y = MatMul (t, W)
}""", {"W": laplace((6, 4))})
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32)}
    view, stats = captured(model, feeds)
    t = rows_of(intermediate(model, "t", feeds), -1)
    np.testing.assert_allclose(stats.hessian(), t.T @ t, rtol=1e-5)
    np.testing.assert_allclose(stats.mean[0], t.mean(axis=0), rtol=1e-5, atol=1e-7)
    assert stats.count == 15 and (view.rows, view.cols) == (4, 6)
    np.testing.assert_array_equal(view.matrix(model_weight(model, "W")), model_weight(model, "W").T)


def model_weight(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_matmul_weight_on_the_left_pairs_with_the_columns_of_its_input():
    model = make_model("""
agraph (float[2, 6, 5] x) => (float[2, 4, 5] y) {
    t = Tanh (x)
    y = MatMul (W, t)
}""", {"W": laplace((4, 6))})
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 6, 5)).astype(np.float32)}
    view, stats = captured(model, feeds)
    t = rows_of(intermediate(model, "t", feeds), -2)
    np.testing.assert_allclose(stats.hessian(), t.T @ t, rtol=1e-5)
    np.testing.assert_array_equal(view.matrix(model_weight(model, "W")), model_weight(model, "W"))


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_transb_weight_rows_are_output_channels_and_columns_the_rows_of_a(trans_a):
    shape = (6, 7) if trans_a else (7, 6)
    model = make_model(f"""
agraph (float[{shape[0]}, {shape[1]}] x) => (float[7, 3] y) {{
    t = Relu (x)
    y = Gemm <transA = {trans_a}, transB = 1> (t, W, B)
}}""", {"W": laplace((3, 6)), "B": np.zeros(3)})
    feeds = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
    view, stats = captured(model, feeds)
    t = intermediate(model, "t", feeds)
    t = t.T if trans_a else t
    np.testing.assert_allclose(stats.hessian(), t.T @ t, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(view.matrix(model_weight(model, "W")), model_weight(model, "W"))


CONVS = {
    "grouped_strided_padded_dilated": ("group = 2, strides = [2, 2], pads = [1, 2, 0, 1], dilations = [2, 1]",
                                       (4, 2, 3, 3), ConvGeometry((3, 3), (2, 2), (1, 2, 0, 1), (2, 1), 2)),
    "depthwise": ("group = 4, pads = [1, 1, 1, 1]", (4, 1, 3, 3), ConvGeometry((3, 3), (), (1, 1, 1, 1), (), 4)),
    "same_upper_strided": ('auto_pad = "SAME_UPPER", strides = [2, 2]', (6, 4, 3, 3),
                           ConvGeometry((3, 3), (2, 2), (1, 0, 1, 1), (), 1)),  # 7x8: pads H 1+1, W 0+1
}


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_hessians_per_group_equal_explicit_receptive_fields(name):
    attrs, shape, geo = CONVS[name]
    model = make_model(f"""
agraph (float[2, 4, 7, 8] x) => (float[2, {shape[0]}, ?, ?] y) {{
    t = Relu (x)
    y = Conv <{attrs}> (t, W)
}}""", {"W": laplace(shape)})
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 4, 7, 8)).astype(np.float32)}
    view, stats = captured(model, feeds)
    t = intermediate(model, "t", feeds)
    cols = shape[1] * 9
    h, s, count = np.zeros((geo.groups, cols, cols)), np.zeros((geo.groups, cols)), 0
    for g, field in receptive_fields(t, geo):
        h[g] += np.outer(field, field)
        s[g] += field
        count += g == 0
    np.testing.assert_allclose(stats.xxt, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.xsum, s, rtol=1e-5, atol=1e-5)
    assert stats.count == count and view.groups == geo.groups and (view.rows, view.cols) == (shape[0], cols)


def test_a_transposed_weight_maps_back_to_where_it_is_stored():
    model = make_model("""
agraph (float[3, 6] x) => (float[3, 4] y) {
    t = Relu (x)
    wt = Transpose <perm = [1, 0]> (W)
    y = MatMul (t, wt)
}""", {"W": laplace((4, 6))})  # stored [out, in]: the MatMul reads its transpose
    graph = gs.import_onnx(model)
    layer = find_layers(graph, ALL)[0][0]
    view = layer_view(layer, graph)
    stored = model_weight(model, "W")
    np.testing.assert_array_equal(view.matrix(stored), stored)  # rows = output channels, as stored
    np.testing.assert_array_equal(view.stored(view.matrix(stored), stored), stored)
    np.testing.assert_array_equal(slot_index(layer), np.arange(24).reshape(4, 6).T)
    np.testing.assert_array_equal(view.channel_of_row, np.arange(4))


def test_sequential_capture_sees_the_compressed_earlier_layer():
    """The second layer's statistics with a changed first weight fed are those of a model that
    stores the changed weight, run directly."""
    w1, w2 = laplace((6, 8), seed=1), laplace((8, 3), seed=2)
    text = """
agraph (float[5, 6] x) => (float[5, 3] y) {
    h = MatMul (x, W1)
    r = Relu (h)
    y = MatMul (r, W2)
}"""
    model = make_model(text, {"W1": w1, "W2": w2})
    changed = np.round(w1 * 4) / 4
    feeds = {"x": np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)}
    _, stats = captured(model, feeds, {"W1": changed}, index=1)
    r = intermediate(make_model(text, {"W1": changed, "W2": w2}), "r", feeds)
    np.testing.assert_allclose(stats.hessian(), r.T @ r, rtol=1e-5)
    fp32 = intermediate(model, "r", feeds)
    assert not np.allclose(stats.hessian(), fp32.T @ fp32, rtol=1e-3)


def test_paired_capture_holds_the_cross_term_of_fp32_and_compressed_inputs():
    w1, w2 = laplace((6, 8), seed=1), laplace((8, 3), seed=2)
    model = make_model("""
agraph (float[N, 6] x) => (float[N, 3] y) {
    h = MatMul (x, W1)
    r = Relu (h)
    y = MatMul (r, W2)
}""", {"W1": w1, "W2": w2})
    changed = (np.round(w1 * 4) / 4).astype(np.float32)
    feeds = {"x": np.random.default_rng(5).standard_normal((8, 6)).astype(np.float32)}
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph, ALL)
    view = layer_view(layers[1], graph)
    template = make_template(model, {"W1", "W2"})
    fit, check = capture_pairs(template, [view], Dataset(feeds, None), 8, {"W1": changed}, 1 << 26, check_every=4)
    hat = Probe(template, ["r"]).run(feeds, {"W1": changed})["r"].astype(np.float64)
    ref = intermediate(model, "r", feeds)
    chosen = np.arange(8) % 4 != 3
    np.testing.assert_allclose(fit["W2"].cross[0], ref[chosen].T @ hat[chosen], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(check["W2"].hat.hessian(), hat[~chosen].T @ hat[~chosen], rtol=1e-4, atol=1e-5)
    assert (fit["W2"].hat.count, check["W2"].hat.count) == (6, 2)


def test_lstm_w_uses_the_sequence_and_r_the_previous_hidden_states():
    rng = np.random.default_rng(6)
    hidden, inputs, steps, batch = 3, 4, 5, 2
    model = make_model(f"""
agraph (float[{steps}, {batch}, {inputs}] x) => (float[{steps}, 1, {batch}, {hidden}] y) {{
    t = Tanh (x)
    y, h_n, c_n = LSTM <hidden_size = {hidden}> (t, W, R)
}}""", {"W": laplace((1, 4 * hidden, inputs)), "R": laplace((1, 4 * hidden, hidden))})
    feeds = {"x": rng.standard_normal((steps, batch, inputs)).astype(np.float32)}
    _, w_stats = captured(model, feeds, index=0)
    t = rows_of(intermediate(model, "t", feeds), -1)
    np.testing.assert_allclose(w_stats.hessian(), t.T @ t, rtol=1e-5)
    _, r_stats = captured(model, feeds, index=1)
    y = run(model, feeds)[0][:, 0].astype(np.float64)  # [steps, batch, hidden]
    prev = np.concatenate([np.zeros((1, batch, hidden)), y[:-1]]).reshape(-1, hidden)
    np.testing.assert_allclose(r_stats.hessian(), prev.T @ prev, rtol=1e-5, atol=1e-7)


def test_layers_whose_inputs_cannot_be_captured_say_why():
    model = make_model("""
agraph (float[1, 4, 5, 5] x) => (float[1, 2, 7, 7] y) {
    t = Relu (x)
    y = ConvTranspose (t, W)
}""", {"W": laplace((4, 2, 3, 3))})
    graph = gs.import_onnx(model)
    reason = layer_view(find_layers(graph, ALL)[0][0], graph)
    assert isinstance(reason, str) and "ConvTranspose" in reason


def test_a_probe_runs_only_the_nodes_its_tensors_need():
    model = make_model("""
agraph (float[2, 6] x) => (float[2, 3] y) {
    a = Relu (x)
    b = MatMul (a, W1)
    y = MatMul (b, W2)
}""", {"W1": laplace((6, 6)), "W2": laplace((6, 3))})
    template = make_template(model, {"W1", "W2"})
    probe = Probe(template, ["a"])
    from onnxjpq.runtime.probe import _pruned
    assert [n.op_type for n in _pruned(template, ["a"]).graph.node] == ["Relu"]
    x = np.ones((2, 6), np.float32)
    np.testing.assert_array_equal(probe.run({"x": x}, {})["a"], x)


def test_stages_keep_independent_layers_together_and_split_chains():
    model = make_model("""
agraph (float[2, 6] x) => (float[2, 6] y) {
    q = MatMul (x, Wq)
    k = MatMul (x, Wk)
    s = Add (q, k)
    y = MatMul (s, Wo)
}""", {"Wq": laplace((6, 6)), "Wk": laplace((6, 6)), "Wo": laplace((6, 6))})
    order = stages(model, [("Wq", ["x"]), ("Wk", ["x"]), ("Wo", ["s"])])
    assert order == [["Wq", "Wk"], ["Wo"]]


def test_a_column_chunk_is_as_large_as_the_hessians_it_adds_to_within_bounds():
    # each chunk's product is widened and added at the Hessians' size: chunks of fewer columns than
    # the layer has spend more on the adding than on the product (CREPE's 8192-column conv2)
    assert chunk_elements(1, 64) == MAX_ELEMENTS
    assert chunk_elements(1, 8192) == 8192 * 8192
    assert chunk_elements(4, 8192) == MAX_CHUNK_ELEMENTS
