"""The packed format's ONNX decoder (onnxjpq.rewrite.packed) in onnxruntime.

A model made only of the decoder must give numpy's reference decode bit for
bit; onnxruntime must fold it into one float initializer at session creation;
the rewriter must leave every consumer reading the weight under its own name.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.core.packing import channel_view, decode, encode
from onnxjpq.core.plan import LayerPlan
from onnxjpq.core.quant import dequantize, to_channels
from onnxjpq.errors import ModelError
from onnxjpq.graph.layers import find_layers
from onnxjpq.rewrite import layer_codes
from onnxjpq.rewrite.packed import (
    PACKED_MIN_OPSET,
    apply_packed,
    decoder_model,
    decoder_nodes,
)
from onnxjpq.testing import MLP, laplace, make_model

DECODER_OPS = {"BitShift", "BitwiseAnd", "BitwiseOr", "Cast", "Sub", "Concat", "Slice", "Reshape", "Mul", "CumSum", "Add",
               "GatherElements", "ScatterElements", "ConstantOfShape", "Gather", "Transpose", "Split", "Unsqueeze",
               "Expand"}


def codes_for(shape, axis, groups, widths, density, seed) -> np.ndarray:
    """Codes whose channels (to_channels order) have `widths`, `density` of them kept."""
    rng = np.random.default_rng(seed)
    chan = np.zeros(to_channels(np.zeros(shape), axis, groups).shape, np.int32)
    for c, width in enumerate(widths):
        m = (1 << (width - 1)) - 1 if width else 0
        chan[c] = rng.integers(-m, m + 1, chan.shape[1]) * (rng.random(chan.shape[1]) < density)
        if m:
            chan[c, rng.integers(chan.shape[1])] = m
    view, perm = channel_view(tuple(shape), axis, groups)
    return chan.reshape(view).transpose(perm).reshape(shape)


def session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL, optimized=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# (shape, axis, groups, widths per channel (cycled), density, per-channel steps)
CASES = {
    "matmul one width dense": ((24, 40), 1, 1, [3], 1.0, False),
    "matmul widths 2-8": ((24, 40), 1, 1, [2, 3, 4, 5, 6, 7, 8], 1.0, False),
    "matmul widths + zero channels, per-channel steps": ((24, 40), 1, 1, [0, 3, 5, 0, 8], 1.0, True),
    "matmul half pruned": ((33, 17), 1, 1, [3, 4], 0.5, False),
    "matmul 99% pruned": ((64, 96), 1, 1, [4], 0.01, False),
    "matmul 90% pruned widths": ((64, 96), 1, 1, [2, 5, 7], 0.1, True),
    "gemm rows": ((40, 24), 0, 1, [1, 2, 3, 6], 0.8, True),
    "conv": ((16, 3, 3, 3), 0, 1, [2, 3, 4], 0.7, True),
    "conv one width per-channel": ((8, 4, 3, 3), 0, 1, [5], 1.0, True),
    "conv transpose groups 2": ((6, 4, 3, 3), 1, 2, [0, 2, 3, 4], 0.6, False),
    "conv transpose groups 3": ((9, 2, 2, 2), 1, 3, [7], 0.3, False),
    "per tensor vector": ((101,), None, 1, [6], 0.4, False),
    "wide codes 9-12": ((12, 20), 1, 1, [9, 12, 3], 0.5, False),
    "all zero": ((5, 7), 1, 1, [0], 1.0, False),
    "single weight": ((1, 1), 1, 1, [3], 1.0, True),
}


def packed_case(name: str):
    shape, axis, groups, widths, density, per_channel = CASES[name]
    channels = to_channels(np.zeros(shape), axis, groups).shape[0]
    codes = codes_for(shape, axis, groups, [widths[c % len(widths)] for c in range(channels)], density,
                      seed=len(name))
    steps = np.linspace(0.01, 0.5, channels).astype(np.float32) if per_channel else np.float32(0.0371)
    return codes, encode(codes, axis, groups, steps)


@pytest.mark.parametrize("name", CASES)
def test_decoder_gives_numpy_decode_exactly(name):
    _, packed = packed_case(name)
    model = decoder_model(packed)
    onnx.checker.check_model(model, full_check=True)
    reference = decode(packed)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        (weight,) = session(model, level).run(None, {})
        assert weight.dtype == np.float32 and weight.shape == reference.shape
        assert weight.tobytes() == reference.tobytes()  # bit for bit, signed zeros included


def test_one_decoder_gives_every_layer_exactly_with_its_streams_and_indexes_shared():
    packs = [packed_case(name)[1] for name in CASES]  # every width, kind, layout and block type at once
    names = [f"W{i}" for i in range(len(packs))]
    model = decoder_model(packs, names)
    onnx.checker.check_model(model, full_check=True)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        for weight, packed in zip(session(model, level).run(names, {}), packs):
            assert weight.tobytes() == decode(packed).tobytes()
    alone = sum(len(decoder_model(p).graph.node) for p in packs)
    assert len(model.graph.node) < alone  # one stream per width, one expansion per kind


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(sorted(CASES)), st.integers(0, 2**16)), min_size=1, max_size=5))
def test_one_decoder_gives_any_mix_of_layers_exactly(picks):
    """Random mixes of the cases (their codes redrawn): grouping by kind and width never mixes
    one layer's positions up with another's."""
    packs = []
    for name, seed in picks:
        shape, axis, groups, widths, density, per_channel = CASES[name]
        channels = to_channels(np.zeros(shape), axis, groups).shape[0]
        codes = codes_for(shape, axis, groups, [widths[c % len(widths)] for c in range(channels)], density, seed)
        steps = np.linspace(0.01, 0.5, channels).astype(np.float32) if per_channel else np.float32(0.0371)
        packs.append(encode(codes, axis, groups, steps))
    names = [f"W{i}" for i in range(len(packs))]
    for weight, packed in zip(session(decoder_model(packs, names)).run(names, {}), packs):
        assert weight.tobytes() == decode(packed).tobytes()


@pytest.mark.parametrize("name", CASES)
def test_decoder_uses_only_the_listed_standard_ops(name):
    nodes, initializers = decoder_nodes("W_packed", ["W"], [packed_case(name)[1]])
    assert {n.op_type for n in nodes} <= DECODER_OPS and all(n.domain == "" for n in nodes)
    assert nodes[-1].output == ["W"]
    assert all(t.name.startswith("W_packed/") for t in initializers)


def consumer_model(name: str, op: str) -> tuple[onnx.ModelProto, np.ndarray]:
    """`op` reading the decoded weight W, and the weight numpy decodes."""
    _, packed = packed_case(name)
    nodes, initializers = decoder_nodes("W_packed", ["W"], [packed])
    shape = packed.shape
    if op == "MatMul":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, shape[0]])
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["y"], name="consumer"))
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[1], 6, 6])
        nodes.append(helper.make_node("Conv", ["x", "W"], ["y"], name="consumer", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", PACKED_MIN_OPSET)]), decode(packed)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED])
@pytest.mark.parametrize("name, op", [("matmul widths + zero channels, per-channel steps", "MatMul"),
                                      ("matmul half pruned", "MatMul"), ("matmul 99% pruned", "MatMul"),
                                      ("wide codes 9-12", "MatMul"), ("conv", "Conv"),
                                      ("conv one width per-channel", "Conv")])
def test_onnxruntime_folds_the_decoder_into_the_float_weight(tmp_path, level, name, op):
    model, weight = consumer_model(name, op)
    optimized = tmp_path / "optimized.onnx"
    session(model, level, optimized)
    folded = onnx.load(str(optimized))
    assert [n.op_type for n in folded.graph.node] in (["MatMul"], ["Conv"], ["FusedMatMul"])
    (stored,) = [t for t in folded.graph.initializer if t.name == folded.graph.node[0].input[1]]
    assert len(folded.graph.initializer) == 1  # the packed arrays are gone: the weight is stored once
    assert numpy_helper.to_array(stored).tobytes() == weight.tobytes()


def test_decoder_model_is_byte_identical_when_built_twice():
    for name in CASES:
        assert decoder_model(packed_case(name)[1]).SerializeToString() == \
            decoder_model(packed_case(name)[1]).SerializeToString()


def mlp(opset: int = PACKED_MIN_OPSET) -> onnx.ModelProto:
    return make_model(MLP, {"W1": laplace((16, 16), 0.1, seed=1), "W2": laplace((16, 32), 0.05, seed=2),
                            "W3": laplace((32, 4), 0.2, seed=3)}, opset=opset)


def plans(layers, prune: float, per_channel: bool) -> dict[str, LayerPlan]:
    out = {}
    for layer in layers:
        magnitude = np.abs(layer.values)
        mask = magnitude >= np.quantile(magnitude, prune)
        step = float(magnitude.max()) / 5
        channels = None
        if per_channel:
            channels = (to_channels(magnitude, layer.axis).max(axis=1) / 5).astype(np.float32)
        out[layer.name] = LayerPlan(layer.name, mask, step, channel_steps=channels,
                                    channel_axis=layer.axis if per_channel else None)
    return out


def packed_and_dense(model: onnx.ModelProto, prune: float, per_channel: bool):
    """The model rewritten by apply_packed, the same with the dequantized floats, and the labels."""
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph)
    by_name = plans(layers, prune, per_channel)
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    for tensor in dense.graph.initializer:
        layer = next(l for l in layers if l.name == tensor.name)
        codes = layer_codes(layer, by_name[layer.name])
        tensor.CopyFrom(numpy_helper.from_array(dequantize(codes, by_name[layer.name].steps_for(codes.shape)),
                                                tensor.name))
    labels = apply_packed(graph, [(layer, by_name[layer.name]) for layer in layers])
    return gs.export_onnx(graph), dense, labels


@pytest.mark.parametrize("prune, per_channel", [(0.0, False), (0.5, True), (0.95, False)])
def test_apply_packed_gives_the_dequantized_model_exactly(prune, per_channel):
    packed, dense, labels = packed_and_dense(mlp(), prune, per_channel)
    onnx.checker.check_model(packed, full_check=True)
    assert all(label.startswith("packed") for label in labels)
    consumers = {n.input[1] for n in packed.graph.node if n.op_type == "MatMul"}
    assert consumers == {"W1", "W2", "W3"}  # the consumers read the weights under their names
    assert not {t.name for t in packed.graph.initializer} & consumers
    x = {"x": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        got, want = session(packed, level).run(None, x)[0], session(dense, level).run(None, x)[0]
        assert got.tobytes() == want.tobytes()


def test_apply_packed_is_byte_identical_when_run_twice():
    first, _, _ = packed_and_dense(mlp(), 0.5, False)
    second, _, _ = packed_and_dense(mlp(), 0.5, False)
    assert first.SerializeToString() == second.SerializeToString()


def test_apply_packed_replaces_a_weight_behind_a_transpose():
    text = """
    agraph (float[2, 8] x) => (float[2, 12] y) {
        wt = Transpose <perm = [1, 0]> (W)
        y = MatMul (x, wt)
    }"""
    model = make_model(text, {"W": laplace((12, 8), 0.1, seed=4)}, opset=PACKED_MIN_OPSET)
    packed, dense, _ = packed_and_dense(model, 0.3, False)
    onnx.checker.check_model(packed, full_check=True)
    x = {"x": np.ones((2, 8), np.float32)}
    assert session(packed).run(None, x)[0].tobytes() == session(dense).run(None, x)[0].tobytes()


def test_apply_packed_refuses_opsets_before_18():
    graph = gs.import_onnx(mlp(opset=17))
    layers, _ = find_layers(graph)
    with pytest.raises(ModelError, match="opset 18"):
        apply_packed(graph, [(layers[0], plans(layers, 0.0, False)[layers[0].name])])
