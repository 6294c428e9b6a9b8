"""Real-world graph shapes and hostile input.

Weights reached through Transpose/Reshape/Cast and inside Scan bodies are
compressed where they are stored and run in onnxruntime close to the
original. Broken input (NaN/Inf or all-zero weights, empty graphs,
unsupported opsets or domains, pickled .npz files, unwritable or full output
locations) ends in a documented behaviour or in one `error: ...` line with
exit status 2; a failed validation exits with 1. The input is never modified
and no partial output is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from onnxjpq import OpqConfig, OutputConfig, Selection, compress_model
from onnxjpq.cli import main
from onnxjpq.pipeline.compress import find_model_layers
from onnxjpq.graph.layers import find_layers
from onnxjpq.errors import ModelError
from onnxjpq.testing import MLP, laplace, run

ALL = Selection(keep=(), min_params=0)


def _model(text: str, weights: dict[str, np.ndarray], opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    """Parse an ONNX text graph and attach initializers of any dtype."""
    model = onnx.parser.parse_model(f'<ir_version: {ir}, opset_import: ["" : {opset}]>\n' + text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items())
    return model


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _assert_close_after(model: onnx.ModelProto, fmt: str = "qdq", granularity: str = "auto", atol=0.05):
    config = OpqConfig(bits=8, granularity=granularity)
    out, report = compress_model(model, config, ALL, OutputConfig(format=fmt))
    onnx.checker.check_model(out)
    feeds = _feeds(model)
    for a, b in zip(run(model, feeds), run(out, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0.05)
    return out, report


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _find_layers(model: onnx.ModelProto):
    """find_layers on a model (no error when nothing is compressible, unlike find_model_layers)."""
    return find_layers(gs.import_onnx(model), ALL)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_one_error(result, code: int = 2, match: str | None = None) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "in.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ------------------------------------------------------------ weights behind Transpose / Reshape / Cast


TRANSPOSED = """
agraph (float[2, 16] x) => (float[2, 8] y) {
    wt = Transpose <perm = [1, 0]> (W)
    y = MatMul (x, wt)
}"""


@pytest.mark.parametrize("fmt", ["qdq", "float", "sparse"])
def test_matmul_of_a_transposed_initializer_is_compressed_where_it_is_stored(fmt):
    model = _model(TRANSPOSED, {"W": laplace((8, 16), 0.1, 1)})
    layers, skipped = find_model_layers(model, ALL)
    assert [(l.name, l.axis, [n.op for n in l.chain]) for l in layers] == [("W", 0, ["Transpose"])]
    assert skipped == []
    out, _ = _assert_close_after(model, fmt)
    ops = [n.op_type for n in out.graph.node]
    assert ops == (["Transpose", "MatMul"] if fmt == "float" else ["DequantizeLinear", "Transpose", "MatMul"])
    if fmt == "qdq":
        dq = out.graph.node[0]
        assert dq.output[0] == "W" and out.graph.node[1].input[0] == "W"


def test_conv_weight_through_a_4d_transpose_gets_the_permuted_channel_axis():
    # HWIO storage, transposed to OIHW for the Conv: the output channels are axis 3 of W.
    model = _model("""
agraph (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) {
    w = Transpose <perm = [3, 2, 0, 1]> (W)
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}""", {"W": laplace((3, 3, 3, 8), 0.1, 2) * np.linspace(0.1, 3, 8, dtype=np.float32)})
    layers, _ = find_model_layers(model, ALL)
    assert layers[0].axis == 3
    out, _ = _assert_close_after(model, granularity="channel")
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 3


@pytest.mark.parametrize("fmt", ["qdq", "float"])
def test_gemm_fed_by_a_cast_of_a_float16_initializer_runs_and_keeps_its_cast(fmt):
    model = _model("""
agraph (float[2, 16] x) => (float[2, 8] y) {
    wf = Cast <to = 1> (W)
    y = Gemm <transB = 1> (x, wf)
}""", {"W": laplace((8, 16), 0.1, 3).astype(np.float16)})
    layers, _ = find_model_layers(model, ALL)
    assert [(l.name, l.axis) for l in layers] == [("W", 0)]
    out, _ = _assert_close_after(model, fmt)
    assert [n.op_type for n in out.graph.node][-2:] == ["Cast", "Gemm"]
    if fmt == "float":  # stored back in its own type: the graph is unchanged
        assert out.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_conv_weight_from_a_reshape_keeps_its_output_channels():
    model = _model("""
agraph (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) {
    w = Reshape (W, shape)
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}""", {"W": laplace((8, 27), 0.1, 4), "shape": np.array([0, 3, -1, 3], np.int64)})
    layers, _ = find_model_layers(model, ALL)
    assert [(l.name, l.axis, l.values.shape) for l in layers] == [("W", 0, (8, 27))]
    _assert_close_after(model)


def test_flat_weight_reshaped_into_a_conv_is_skipped_with_a_reason():
    model = _model("""
agraph (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) {
    w = Reshape (W, shape)
    y = Conv <pads = [1, 1, 1, 1]> (x, w)
}""", {"W": laplace((216,), 0.1, 5), "shape": np.array([8, 3, 3, 3], np.int64)})
    with pytest.raises(ModelError, match="output channels cannot be traced through Reshape"):
        find_model_layers(model, ALL)


@pytest.mark.parametrize("text, reason", [
    ("""
agraph (float[2, 16] x) => (float[2, 8] y, float[16, 8] t) {
    t = Transpose <perm = [1, 0]> (W)
    y = MatMul (x, t)
}""", "graph input or output"),
    ("""
agraph (float[2, 16] x) => (float[2, 8] y) {
    t = Transpose <perm = [1, 0]> (W)
    h = MatMul (x, t)
    s = ReduceSum <keepdims = 0> (W)
    y = Add (h, s)
}""", "also feeds ReduceSum"),
    ("""
agraph (float[2, 16] x) => (float[2, 8] y) {
    t = Transpose <perm = [1, 0]> (W)
    h = MatMul (x, t)
    wt = Transpose <perm = [1, 0]> (W)
    g = MatMul (x, wt)
    y = Add (h, g)
}""", "different Transpose/Reshape/Cast"),
])
def test_chained_weights_used_elsewhere_are_skipped_with_the_reason(text, reason):
    layers, skipped = _find_layers(_model(text, {"W": laplace((8, 16), 0.1, 6)}))
    assert layers == []
    assert len(skipped) == 1 and reason in skipped[0].reason


def test_cast_to_float16_before_the_slot_is_skipped():
    layers, skipped = _find_layers(_model("""
agraph (float16[2, 16] x) => (float16[2, 8] y) {
    w = Cast <to = 10> (W)
    y = MatMul (x, w)
}""", {"W": laplace((16, 8), 0.1, 7)}))
    assert layers == [] and "as float16" in skipped[0].reason


def test_weight_inside_a_scan_body_is_compressed():
    model = _model("""
agraph (float[3, 2, 16] xs) => (float[2, 16] final, float[3, 2, 16] ys) {
    init = Constant <value = float[2, 16] {0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0}> ()
    final, ys = Scan <num_scan_inputs = 1, body = body (float[2, 16] h, float[2, 16] x) => (float[2, 16] h2,
                                                                                            float[2, 16] y) {
        m = MatMul (x, W)
        h2 = Add (h, m)
        y = Identity (h2)
    }> (init, xs)
}""", {"W": laplace((16, 16), 0.1, 8)})
    layers, _ = find_model_layers(model, ALL)
    assert [l.name for l in layers] == ["W"]
    out, report = _assert_close_after(model)
    assert report["layers"][0]["container"] in ("int4", "int8")


# ------------------------------------------------------------ hostile weights


def _mlp(w2: np.ndarray | None = None, opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    return _model(MLP, {"W1": laplace((16, 16), 0.1, 1), "W2": laplace((16, 32), 0.05, 2) if w2 is None else w2,
                        "W3": laplace((32, 4), 0.2, 3)}, opset=opset, ir=ir)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights_are_left_as_they_are_and_reported(bad, tmp_path):
    w2 = laplace((16, 32), 0.05, 2)
    w2[3, 4] = bad
    src, out, report = _save(tmp_path, _mlp(w2)), tmp_path / "out.onnx", tmp_path / "report.json"
    before = _sha(src)
    result = _invoke("compress", src, "-o", out, "--report", report, "--keep", "none", "-q")
    assert result.exit_code == 0, result.output
    skipped = {s["name"]: s["reason"] for s in json.loads(report.read_text())["skipped"]}
    assert skipped["W2"] == "1 of 512 values are NaN or Inf (left as they are)"
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(stored["W2"], w2)
    assert _sha(src) == before


def test_a_model_whose_only_weight_is_nan_is_refused_naming_it(tmp_path):
    src = _save(tmp_path, _model(TRANSPOSED, {"W": np.full((8, 16), np.nan, np.float32)}))
    _assert_one_error(_invoke("compress", src, "-o", tmp_path / "out.onnx"), match="W: 128 of 128 values are NaN")
    assert _leftovers(tmp_path, {"in.onnx"}) == []


@pytest.mark.parametrize("options", [["--bits", "4"], ["--rate", "8"], ["--granularity", "channel", "--bits", "3"],
                                     ["--format", "float"]])
def test_an_all_zero_layer_compresses_without_warnings_or_nan(options, tmp_path):
    src, out = _save(tmp_path, _mlp(np.zeros((16, 32), np.float32))), tmp_path / "out.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _invoke("compress", src, "-o", out, "--keep", "none", "--json", *options)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert all(np.isfinite(v) for v in report["totals"].values() if isinstance(v, float))
    feeds = _feeds(_mlp())
    y = run(onnx.load(str(out)), feeds)[0]
    np.testing.assert_array_equal(y, np.zeros_like(y))  # the dead layer stays dead


def test_an_all_zero_layer_counts_as_pruned_toward_the_prune_ratio(tmp_path):
    src = _save(tmp_path, _mlp(np.zeros((16, 32), np.float32)))  # 512 of 896 weights are 0
    result = _invoke("compress", src, "-o", tmp_path / "out.onnx", "--keep", "none", "--prune", "0.6", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"]["prune_ratio"] == pytest.approx(0.6, abs=0.01)
    # W1 kept dense: 717 - 512 weights to prune, and only W3's 128 may be
    _assert_one_error(_invoke("compress", src, "-o", tmp_path / "out.onnx", "--keep", "W1", "--prune", "0.8"),
                      match="cannot prune 80% of the weights: only 128 of 896 may be pruned")


# ------------------------------------------------------------ hostile models


def _empty_graph() -> onnx.ModelProto:
    return helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])


def _custom_op() -> onnx.ModelProto:
    model = _mlp()
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.example"))
    model.graph.output[0].name = "z"
    return model


@pytest.mark.parametrize("make, options, match", [
    (_empty_graph, [], "no graph"),
    (lambda: _mlp(opset=99), [], "opset 99 is newer"),
    (lambda: _mlp(opset=5), ["--format", "float"], "opset 5 is older than onnxruntime runs"),
    (lambda: _mlp(ir=99), [], "IR version 99 is newer"),
    (_custom_op, [], "com.example:Mystery"),
])
def test_unsupported_models_are_refused_in_one_line(make, options, match, tmp_path):
    src, out = _save(tmp_path, make()), tmp_path / "out.onnx"
    before = _sha(src)
    _assert_one_error(_invoke("compress", src, "-o", out, *options), match=match)
    assert _sha(src) == before
    assert _leftovers(tmp_path, {"in.onnx"}) == []


def test_opset_5_is_upgraded_for_dequantize_linear(tmp_path):
    src, out = _save(tmp_path, _mlp(opset=5)), tmp_path / "out.onnx"
    assert _invoke("compress", src, "-o", out, "-q").exit_code == 0
    onnx.checker.check_model(onnx.load(str(out)))


# ------------------------------------------------------------ hostile data files


class _Touch:
    """Unpickling this creates `path`: proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_an_npz_with_pickled_objects_is_refused_and_never_unpickled(tmp_path):
    src = _save(tmp_path, _mlp())
    marker = tmp_path / "unpickled"
    data = tmp_path / "data.npz"
    np.savez(data, x=np.array([_Touch(str(marker))], dtype=object))
    result = _invoke("eval", src, src, "--data", data, "--runs", "0")
    _assert_one_error(result, match="pickled Python objects")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"\x93NUMPY not really"])
def test_broken_npz_files_are_refused_in_one_line(content, tmp_path):
    src, data = _save(tmp_path, _mlp()), tmp_path / "data.npz"
    data.write_bytes(content)
    _assert_one_error(_invoke("eval", src, src, "--data", data, "--runs", "0"), match="data.npz")


# ------------------------------------------------------------ unwritable and full outputs


def test_output_into_a_read_only_folder_is_one_error_line(tmp_path, monkeypatch):
    src, folder = _save(tmp_path, _mlp()), tmp_path / "ro"
    folder.mkdir()
    before = _sha(src)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse like a read-only one does
        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        folder.chmod(0o555)
    try:
        line = _assert_one_error(_invoke("compress", src, "-o", folder / "out.onnx", "-q"))
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in line
    assert _leftovers(folder, set()) == []
    assert _sha(src) == before


def test_a_full_disk_while_writing_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch):
    src, out = _save(tmp_path, _mlp()), tmp_path / "out.onnx"
    before = _sha(src)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    line = _assert_one_error(_invoke("compress", src, "-o", out, "--report", tmp_path / "r.json", "-q"))
    assert "No space left on device" in line
    assert _leftovers(tmp_path, {"in.onnx"}) == []
    assert _sha(src) == before


def test_a_report_that_cannot_be_written_leaves_no_model_behind(tmp_path, monkeypatch):
    import onnxjpq.workflows.compress as compress

    src, out = _save(tmp_path, _mlp()), tmp_path / "out.onnx"

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(compress, "write_text_atomic", full)
    _assert_one_error(_invoke("compress", src, "-o", out, "--report", tmp_path / "r.json", "-q"),
                      match="No space left on device")
    assert _leftovers(tmp_path, {"in.onnx"}) == []


def test_an_output_that_is_a_device_is_refused_before_any_work(tmp_path):
    src = _save(tmp_path, _mlp())
    _assert_one_error(_invoke("compress", src, "-o", "/dev/null", "-q"), match="not a regular file")


# ------------------------------------------------------------ exit codes and pipelines


def test_help_documents_the_exit_codes():
    result = _invoke("--help")
    assert result.exit_code == 0
    assert "Exit status" in result.output and "1  a compressed model failed" in result.output


def _eval_pair(tmp_path):
    ref = _save(tmp_path, _mlp(), "ref.onnx")
    other = _mlp()
    other.graph.initializer[2].CopyFrom(numpy_helper.from_array(laplace((32, 4), 0.2, 99), "W3"))
    cand = _save(tmp_path, other, "cand.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    return ref, cand, data


def test_eval_max_drop_failing_exits_1_with_one_line_and_still_writes_the_json(tmp_path):
    ref, cand, data = _eval_pair(tmp_path)
    result = _invoke("eval", ref, cand, "--data", data, "--runs", "0", "--max-drop", "5", "--json", "-", "-q")
    _assert_one_error(result, code=1, match="agreement points")
    assert json.loads(result.stdout)["metrics"]["agreement"] < 95


def test_eval_max_drop_met_exits_0(tmp_path):
    ref, _, data = _eval_pair(tmp_path)
    result = _invoke("eval", ref, ref, "--data", data, "--runs", "0", "--max-drop", "0", "-q")
    assert result.exit_code == 0 and result.stderr == ""


def test_compress_json_prints_only_the_report_on_stdout(tmp_path):
    src, out = _save(tmp_path, _mlp()), tmp_path / "out.onnx"
    result = _invoke("compress", src, "-o", out, "--json", "--bits", "4")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert {"totals", "layers", "skipped"} <= set(report)
    assert "wrote" in result.stderr


def test_inspect_quiet_json_prints_only_json(tmp_path):
    result = _invoke("inspect", _save(tmp_path, _mlp()), "--json", "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert [layer["name"] for layer in json.loads(result.stdout)["layers"]] == ["W1", "W2", "W3"]


def test_a_weight_passed_into_a_loop_body_as_an_input_is_skipped_with_the_reason():
    layers, skipped = _find_layers(_model("""
agraph (float[2, 16] x, int64 n) => (float[16, 16] wout, float[3, 2, 16] ys) {
    c = Constant <value = bool {1}> ()
    wout, ys = Loop (n, c, W) <body = body (int64 i, bool cin, float[16, 16] w) => (bool cout, float[16, 16] w2,
                                                                                   float[2, 16] s) {
        cout = Identity (cin)
        w2 = Identity (w)
        s = MatMul (x, w)
    }>
}""", {"W": laplace((16, 16), 0.1, 9)}))
    assert layers == []
    assert [(s.name, s.op, s.reason) for s in skipped] == [
        ("W", "MatMul", "reaches MatMul as an input of a Loop body (weights passed into subgraphs as inputs "
                        "are left in float)")]


def test_a_weight_whose_consumers_disagree_on_the_channel_axis_is_skipped():
    layers, skipped = _find_layers(_model("""
agraph (float[16, 16] x) => (float[16, 16] y) {
    a = MatMul (x, W)
    b = MatMul (W, x)
    y = Add (a, b)
}""", {"W": laplace((16, 16), 0.1, 10)}))
    assert layers == [] and "disagree on the output-channel axis" in skipped[0].reason


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.float32(1.0)}, "x is a single value"),
    ({"labels": np.array(list("ab"))}, "labels must be integer class indices, got <U1"),
    ({"labels": np.array([0.5, np.nan])}, "labels must be integer class indices"),
    ({"labels": np.int64(3)}, "labels is a single value"),
    ({"x": np.zeros((0, 16), np.float32)}, "no samples"),
])
def test_malformed_data_arrays_are_refused_in_one_line(arrays, match, tmp_path):
    src, data = _save(tmp_path, _mlp()), tmp_path / "data.npz"
    np.savez(data, **({"x": np.zeros((2, 16), np.float32)} | arrays))
    _assert_one_error(_invoke("eval", src, src, "--data", data, "--runs", "0"), match=match)


def test_whole_number_float_labels_are_accepted(tmp_path):
    src, data = _save(tmp_path, _mlp()), tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 16), np.float32), labels=np.array([0.0, 1.0, 2.0, 3.0]))
    assert _invoke("eval", src, src, "--data", data, "--runs", "0", "-q").exit_code == 0


@pytest.mark.parametrize("fmt", ["qdq", "float"])
def test_float16_constant_node_through_transpose_and_cast_keeps_consistent_types(fmt):
    # The exporter annotated the float16 intermediates: after the rewrite they carry float32 (qdq)
    # or stay float16 (float), and onnx's full check agrees with the graph.
    weight = numpy_helper.from_array(laplace((8, 16), 0.1, 12).astype(np.float16))
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w16"], value=weight),
         helper.make_node("Transpose", ["w16"], ["wt"], perm=[1, 0]),
         helper.make_node("Cast", ["wt"], ["wf"], to=onnx.TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "wf"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
        value_info=[helper.make_tensor_value_info("w16", onnx.TensorProto.FLOAT16, [8, 16]),
                    helper.make_tensor_value_info("wt", onnx.TensorProto.FLOAT16, [16, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out, _ = _assert_close_after(model, fmt)
    onnx.checker.check_model(out, full_check=True)
    types = {v.name: v.type.tensor_type.elem_type for v in out.graph.value_info}
    expected = onnx.TensorProto.FLOAT if fmt == "qdq" else onnx.TensorProto.FLOAT16
    assert types == {"w16": expected, "wt": expected}


def test_max_drop_search_on_a_fixed_batch_model_runs_in_its_batch_size(tmp_path):
    # The MLP fixes batch 2: the search's predictions must run 2 samples at a time.
    src, data, out = _save(tmp_path, _mlp()), tmp_path / "data.npz", tmp_path / "out.onnx"
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    result = _invoke("compress", src, "-o", out, "--max-drop", "100", "--data", data, "--min-params", "0", "-q")
    assert result.exit_code == 0, result.output
    np.savez(data, x=np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32))
    _assert_one_error(_invoke("compress", src, "-o", out, "--max-drop", "100", "--data", data),
                      match="7 samples do not split into the model's fixed batch size 2")


@pytest.mark.parametrize("fmt", ["qdq", "float"])
def test_chains_inside_if_branches_on_outer_initializers_are_compressed(fmt):
    model = _model("""
agraph (float[2, 16] x, bool c) => (float[2, 8] y) {
    y = If (c) <then_branch = g1 () => (float[2, 8] a) { t = Transpose <perm = [1, 0]> (W)
                                                          a = MatMul (x, t) },
                else_branch = g2 () => (float[2, 8] b) { h = Cast <to = 1> (H)
                                                          b = MatMul (x, h) }>
}""", {"W": laplace((8, 16), 0.1, 13), "H": laplace((16, 8), 0.1, 14).astype(np.float16)})
    layers, _ = find_model_layers(model, ALL)
    assert sorted((l.name, l.axis) for l in layers) == [("H", 1), ("W", 0)]
    out, _ = compress_model(model, OpqConfig(bits=8), ALL, OutputConfig(format=fmt))
    onnx.checker.check_model(out, full_check=True)
    for branch in (True, False):
        feeds = {"x": _feeds(model)["x"], "c": np.array(branch)}
        np.testing.assert_allclose(run(model, feeds)[0], run(out, feeds)[0], atol=0.05)
