"""Gather tables (token embeddings): skipped unless asked for, then compressed like a weight."""

import numpy as np


from onnxjpq import OpqConfig, OutputConfig, Selection, compress_model
from onnxjpq.pipeline.compress import find_model_layers
from onnxjpq.graph.macs import layer_macs, tensor_shapes
from onnxjpq.testing import laplace, make_model, run

EMBEDDING = """
agraph (int64[2, 5] ids) => (float[2, 5, 16] y) {
    e = Gather <axis = 0> (table, ids)
    y = MatMul(e, W)
}"""


def _model():
    return make_model(EMBEDDING, {"table": laplace((100, 16), 0.5), "W": laplace((16, 16), 0.1, 1)})


def test_an_embedding_table_is_skipped_with_a_reason_by_default():
    layers, skipped = find_model_layers(_model(), Selection(min_params=0))
    assert [l.name for l in layers] == ["W"]
    assert skipped[0].name == "table" and "embeddings are selected" in skipped[0].reason


def test_with_embeddings_the_table_is_compressed_and_the_model_runs():
    model = _model()
    out, report = compress_model(model, OpqConfig(bits=8), Selection(min_params=0, embeddings=True),
                                 OutputConfig(int4=False))
    assert {row["name"] for row in report["layers"]} == {"table", "W"}
    ids = {"ids": np.array([[0, 5, 17, 99, 3], [1, 2, 3, 4, 5]], np.int64)}
    np.testing.assert_allclose(run(out, ids)[0], run(model, ids)[0], atol=0.05 * np.abs(run(model, ids)[0]).max())
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("DequantizeLinear") == 2 and "Gather" in ops


def test_a_table_lookup_counts_no_macs():
    model = _model()
    layers, _ = find_model_layers(model, Selection(min_params=0, embeddings=True))
    shapes = tensor_shapes(model)
    macs = {l.name: layer_macs(l, shapes) for l in layers}
    assert macs == {"table": 0, "W": 2 * 5 * 16 * 16}
