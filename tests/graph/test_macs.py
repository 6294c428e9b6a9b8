"""MACs of models whose sizes shape inference cannot find on its own (dynamic spatial axes;
a Reshape to a shape computed from Shape through Casts at opset 11, as Paddle exports write
it), sized by the data a run is given."""

import numpy as np

from onnxjpq.graph.layers import Selection
from onnxjpq.graph.macs import layer_macs, tensor_shapes
from onnxjpq.pipeline.compress import find_model_layers
from onnxjpq.runtime.data import Dataset
from onnxjpq.runtime.shapes import data_macs
from onnxjpq.testing import laplace, make_model

ANY_SIZE = """
agraph (float[N, 2, H, W] x) => (float[N, 4] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, K)
    p = GlobalAveragePool(c)
    s64 = Shape(p)
    s = Cast <to = 6> (s64)
    zero = Constant <value = int64[1] {0}> ()
    one = Constant <value = int64[1] {1}> ()
    minus_one32 = Constant <value = int32[1] {-1}> ()
    minus_one = Cast <to = 7> (minus_one32)
    n32 = Slice(s, zero, one)
    n = Cast <to = 7> (n32)
    shape = Concat <axis = 0> (n, minus_one)
    f = Reshape(p, shape)
    y = MatMul(f, W)
}"""


def _model():
    return make_model(ANY_SIZE, {"K": laplace((8, 2, 3, 3), 0.3), "W": laplace((8, 4), 0.3, 1)}, opset=11)


def _macs(model, data):
    layers, _ = find_model_layers(model, Selection(min_params=0))
    return data_macs(model, layers, Dataset({"x": data}, None))


def test_dynamic_spatial_axes_take_the_datas_sizes():
    macs = _macs(_model(), np.zeros((5, 2, 6, 10), np.float32))
    assert macs["K"] == 6 * 10 * 8 * 2 * 3 * 3  # per sample: the batch counts as 1


def test_a_reshape_inference_cannot_size_is_measured_by_a_run():
    model = _model()
    layers, _ = find_model_layers(model, Selection(min_params=0))
    inferred = tensor_shapes(model, {"x": (5, 2, 6, 10)})
    assert layer_macs(next(l for l in layers if l.name == "W"), inferred) is None
    assert _macs(model, np.zeros((5, 2, 6, 10), np.float32))["W"] == 8 * 4


def test_without_data_the_dynamic_axes_count_as_one():
    model = _model()
    layers, _ = find_model_layers(model, Selection(min_params=0))
    shapes = tensor_shapes(model)
    assert layer_macs(next(l for l in layers if l.name == "K"), shapes) == 8 * 2 * 3 * 3
