"""rewrite.bias: a corrected bias lands where the op reads it, and nowhere else."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxjpq.graph.layers import Selection, find_layers
from onnxjpq.rewrite.bias import bias_site, current_bias, write_bias
from onnxjpq.testing import laplace, make_model, run

ALL = Selection(min_params=0)


def rewritten(model, bias):
    graph = gs.import_onnx(model)
    layer = find_layers(graph, ALL)[0][0]
    write_bias(graph, layer, bias)
    return gs.export_onnx(graph)


CASES = {
    "conv_without_bias": ("""
agraph (float[1, 3, 5, 5] x) => (float[1, 4, 5, 5] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, W)
}""", {"W": laplace((4, 3, 3, 3))}, (1, 3, 5, 5), (1, 4, 1, 1), 1.0),
    "gemm_alpha_beta": ("""
agraph (float[2, 6] x) => (float[2, 4] y) {
    y = Gemm <alpha = 2.0, beta = 0.5, transB = 1> (x, W, C)
}""", {"W": laplace((4, 6)), "C": np.arange(4.0)}, (2, 6), (1, 4), 1.0),
    "matmul_then_add": ("""
agraph (float[2, 6] x) => (float[2, 4] y) {
    h = MatMul (x, W)
    y = Add (h, B)
}""", {"W": laplace((6, 4)), "B": np.arange(4.0)}, (2, 6), (1, 4), 1.0),
    "matmul_alone": ("""
agraph (float[2, 6] x) => (float[2, 4] y) {
    y = MatMul (x, W)
}""", {"W": laplace((6, 4))}, (2, 6), (1, 4), 1.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_new_bias_shifts_each_output_channel(name):
    text, weights, x_shape, view, _ = CASES[name]
    model = make_model(text, weights)
    graph = gs.import_onnx(model)
    site = bias_site(graph, find_layers(graph, ALL)[0][0])
    base = current_bias(site)
    base = np.zeros(4) if base is None else base
    new = base + np.array([1.0, -2.0, 0.5, 3.0])
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    before, after = run(model, {"x": x})[0], run(rewritten(model, new), {"x": x})[0]
    shift = (new - base) * (0.5 if name == "gemm_alpha_beta" else 1.0)  # beta scales C
    np.testing.assert_allclose(after - before, np.broadcast_to(shift.reshape(view), before.shape), atol=1e-5)


def test_a_bias_shared_with_another_node_is_copied_not_changed():
    model = make_model("""
agraph (float[2, 6] x) => (float[2, 4] y, float[2, 4] z) {
    h = MatMul (x, W)
    y = Add (h, B)
    x2 = Relu (y)
    z = Add (x2, B)
}""", {"W": laplace((6, 4)), "B": np.arange(4.0)})
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    y0, _ = run(model, {"x": x})
    out = rewritten(model, np.arange(4.0) + 1.0)
    y1, z1 = run(out, {"x": x})
    np.testing.assert_allclose(y1 - y0, np.ones_like(y0), atol=1e-5)
    np.testing.assert_allclose(z1, np.maximum(y1, 0) + np.arange(4.0), atol=1e-5)  # z still reads the old B


def test_a_weight_on_the_left_of_matmul_has_no_bias_to_correct():
    model = make_model("""
agraph (float[6, 3] x) => (float[4, 3] y) {
    y = MatMul (W, x)
}""", {"W": laplace((4, 6))})
    graph = gs.import_onnx(model)
    reason = bias_site(graph, find_layers(graph, ALL)[0][0])
    assert isinstance(reason, str) and "no per-output-channel bias" in reason
