"""Fuzzing `onnxjpq compress` with broken ONNX files.

Valid tiny models are mutated at the byte level (flips, truncation) and at
the protobuf level (dims, dtypes, op types, attributes, inputs, opsets), and
the CLI runs in-process on each (compress in several modes, inspect; eval on
mutated .npz data files). Whatever the input, the run must end either
with status 0 and an output onnx.checker accepts, or with status 1 or 2 and a
single `error: ...` line: never an unhandled exception, never a partial
output, never a modified input. The examples are derandomized, so CI sees the
same cases on every run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.cli import main
from onnxjpq.testing import laplace

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _model(text: str, weights: dict[str, np.ndarray], opset: int = 17) -> bytes:
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    onnx.checker.check_model(model)
    return model.SerializeToString()


SEEDS = {
    "mlp": _model("""
agraph (float[2, 16] x) => (float[2, 4] y) {
    h1 = MatMul (x, W1)
    r1 = Relu (h1)
    h2 = Gemm <transB = 1> (r1, W2, b2)
    r2 = Relu (h2)
    y = MatMul (r2, W3)
}""", {"W1": laplace((16, 16), 0.1, 1), "W2": laplace((32, 16), 0.05, 2), "b2": np.zeros(32, np.float32),
       "W3": laplace((32, 4), 0.2, 3)}),
    "conv": _model("""
agraph (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, W)
    r = Relu (c)
    y = Conv (r, V)
}""", {"W": laplace((8, 3, 3, 3), 0.1, 4), "V": laplace((4, 8, 1, 1), 0.1, 5)}),
    "chain": _model("""
agraph (float[2, 16] x) => (float[2, 8] y) {
    wt = Transpose <perm = [1, 0]> (W)
    h = MatMul (x, wt)
    v = Reshape (V, shape)
    y = MatMul (h, v)
}""", {"W": laplace((8, 16), 0.1, 6), "V": laplace((64,), 0.1, 7), "shape": np.array([8, 8], np.int64)}),
    "branches": _model("""
agraph (float[2, 16] x, bool c) => (float[2, 8] y) {
    w16 = Cast <to = 1> (H)
    y = If (c) <then_branch = g1 () => (float[2, 8] a) { a = MatMul (x, W) },
                else_branch = g2 () => (float[2, 8] b) { b = Gemm (x, w16) }>
}""", {"W": laplace((16, 8), 0.1, 8), "H": laplace((16, 8), 0.1, 9).astype(np.float16)}),
    "constants": _model("""
agraph (float[1, 2, 8, 8] x) => (float[1, 4, 8, 8] y) {
    w = Constant <value = float[4, 2, 3, 3] {%s}> ()
    c = ConvTranspose <pads = [1, 1, 1, 1]> (x, W)
    y = Conv <pads = [1, 1, 1, 1]> (c, w)
}""" % ", ".join(f"{v:.3f}" for v in laplace((72,), 0.1, 10)), {"W": laplace((2, 4, 3, 3), 0.1, 11)}),
}

OP_TYPES = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Relu", "Transpose", "Reshape", "Cast", "Gather",
            "Identity", "DequantizeLinear", "If", "Loop", "Scan", "Constant", "NoSuchOp", ""]
INTS = st.integers(min_value=-3, max_value=70000).filter(lambda v: v < 40 or v > 60000) | st.sampled_from(
    [0, 1, 2**31, -(2**40)])


# ------------------------------------------------------------------ mutations


def _flip(data: bytes, draw) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(out) - 1))
        out[i] ^= draw(st.integers(1, 255))
    return bytes(out)


def _truncate(data: bytes, draw) -> bytes:
    return data[:draw(st.integers(0, len(data) - 1))]


def _tensor_field(model: onnx.ModelProto, draw) -> None:
    if not model.graph.initializer:
        return
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    what = draw(st.sampled_from(["dim", "dtype", "drop_dim", "add_dim", "name", "raw"]))
    if what == "dim" and tensor.dims:
        tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] = draw(INTS)
    elif what == "dtype":
        tensor.data_type = draw(st.sampled_from(list(TensorProto.DataType.values()) + [0, 99]))
    elif what == "drop_dim" and tensor.dims:
        del tensor.dims[-1]
    elif what == "add_dim":
        tensor.dims.append(draw(st.integers(0, 3)))
    elif what == "name":
        tensor.name = draw(st.sampled_from(["", "x", "y", "W1", "missing"]))
    else:
        tensor.raw_data = tensor.raw_data[:draw(st.integers(0, max(len(tensor.raw_data) - 1, 0)))]


def _node_field(model: onnx.ModelProto, draw) -> None:
    if not model.graph.node:
        return
    node = draw(st.sampled_from(list(model.graph.node)))
    what = draw(st.sampled_from(["op", "drop_input", "bad_input", "extra_input", "attr", "domain", "drop_output"]))
    if what == "op":
        node.op_type = draw(st.sampled_from(OP_TYPES))
    elif what == "drop_input" and node.input:
        del node.input[draw(st.integers(0, len(node.input) - 1))]
    elif what == "bad_input" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(["", "nowhere", "y"]))
    elif what == "extra_input":
        node.input.append(draw(st.sampled_from(["x", "W1", "W", "nowhere", ""])))
    elif what == "attr":
        name = draw(st.sampled_from(["transA", "transB", "perm", "group", "pads", "axis", "to", "alpha",
                                     "kernel_shape", "strides", "allowzero"]))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        value = draw(st.one_of(INTS, st.lists(INTS, max_size=5), st.floats(allow_nan=True),
                               st.sampled_from(["text"])))
        node.attribute.append(helper.make_attribute(name, value) if value != [] else
                              helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS))
    elif what == "domain":
        node.domain = draw(st.sampled_from(["com.foo", "ai.onnx.ml", "com.microsoft", "ai.onnx"]))
    elif what == "drop_output" and node.output:
        del node.output[:]


def _graph_field(model: onnx.ModelProto, draw) -> None:
    what = draw(st.sampled_from(["opset", "ir", "input_dim", "input_type", "drop_output", "drop_init",
                                 "dup_node", "drop_node", "swap_nodes", "drop_graph_input"]))
    graph = model.graph
    if what == "opset":
        model.opset_import[0].version = draw(st.integers(-1, 40))
    elif what == "ir":
        model.ir_version = draw(st.integers(-1, 20))
    elif what == "input_dim" and graph.input and graph.input[0].type.tensor_type.shape.dim:
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(INTS)
    elif what == "input_type" and graph.input:
        graph.input[0].type.tensor_type.elem_type = draw(st.sampled_from([0, 2, 6, 7, 10, 11, 16, 40]))
    elif what == "drop_output":
        del graph.output[:]
    elif what == "drop_init" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif what == "dup_node":
        graph.node.append(graph.node[draw(st.integers(0, len(graph.node) - 1))])
    elif what == "drop_node" and len(graph.node) > 1:
        del graph.node[draw(st.integers(0, len(graph.node) - 1))]
    elif what == "swap_nodes" and len(graph.node) > 1:
        first = onnx.NodeProto()
        first.CopyFrom(graph.node[0])
        graph.node[0].CopyFrom(graph.node[-1])
        graph.node[-1].CopyFrom(first)
    elif what == "drop_graph_input":
        del graph.input[:]


@st.composite
def mutated_models(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[name]
    kind = draw(st.sampled_from(["flip", "truncate", "proto", "proto", "proto", "proto"]))
    if kind == "flip":
        return name, _flip(data, draw)
    if kind == "truncate":
        return name, _truncate(data, draw)
    model = onnx.load_from_string(data)
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from([_tensor_field, _node_field, _graph_field]))(model, draw)
    return name, model.SerializeToString()


# ------------------------------------------------------------------ the property


def assert_clean_run(data: bytes, options: list[str], command: str = "compress") -> None:
    """Run `command` on `data` in-process; it ends in a valid output or in one error line."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(data)
        args = ["compress", str(src), "-o", str(out), "-q"] if command == "compress" else [command, str(src)]
        result = CliRunner().invoke(main, [*args, *options])
        assert src.read_bytes() == data, "the input was modified"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an unhandled exception: its traceback is the bug report
        assert result.exit_code in (0, 1, 2), result.exit_code
        if result.exit_code == 0:
            if command == "compress":
                onnx.checker.check_model(onnx.load(str(out)))
        else:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            assert "Traceback" not in result.output
            assert not out.exists()
        assert not [p for p in Path(tmp).iterdir() if p.name not in ("in.onnx", "out.onnx")]


@settings(FUZZ, max_examples=800)
@given(mutated_models())
def test_mutated_models_compress_or_fail_with_one_line(case):
    _, data = case
    assert_clean_run(data, ["--prune", "0.3", "--bits", "6", "--keep", "none", "--min-params", "0"])


@settings(FUZZ, max_examples=200)
@given(mutated_models(), st.sampled_from([["--format", "float"], ["--format", "sparse"], ["--rate", "8"],
                                          ["--no-int4", "--granularity", "channel"]]))
def test_mutated_models_in_other_modes(case, options):
    _, data = case
    assert_clean_run(data, [*options, "--keep", "none", "--min-params", "0"])


@settings(FUZZ, max_examples=150)
@given(mutated_models())
def test_mutated_models_inspect_or_fail_with_one_line(case):
    _, data = case
    assert_clean_run(data, ["--json", "--min-params", "0"], command="inspect")


def _npz_seed() -> bytes:
    import io

    import zipfile

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((4, 16)).astype(np.float32), "labels": np.arange(4) % 4}
    with zipfile.ZipFile(buffer, "w") as archive:  # np.savez stamps the current time: fixed here
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, array)
    return buffer.getvalue()


NPZ = _npz_seed()


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_data_files_evaluate_or_fail_with_one_line(data):
    blob = data.draw(st.sampled_from([_flip, _truncate]))(NPZ, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        model, path = Path(tmp) / "m.onnx", Path(tmp) / "d.npz"
        model.write_bytes(SEEDS["mlp"])
        path.write_bytes(blob)
        result = CliRunner().invoke(main, ["eval", str(model), str(model), "--data", str(path), "--runs", "0", "-q"])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code in (0, 2)
        if result.exit_code:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
