"""Unusual but valid models (issue 15, items 4-6), built in code and run through the CLI.

Weights behind a Cast from bfloat16 or float8, empty weights and outputs, weights
near float32's limit, a Constant's sparse_value, local functions, IR version 3 and
an opset whose DequantizeLinear onnxruntime lacks: each is compressed into a model
that passes onnx.checker and runs in onnxruntime close to the input, or refused
with one `error: ...` line and exit status 2. Never a traceback; the input is
unchanged and nothing is left behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.cli import main
from onnxjpq.core.quant import dequantize, quantize_codes
from onnxjpq.core.stats import laplace_scale
from onnxjpq.graph import opset as opset_module
from onnxjpq.methods.opq import OpqConfig, solve_opq
from onnxjpq.testing import laplace

NEWEST = onnx.defs.onnx_opset_version()


def _model(text: str, weights: dict[str, np.ndarray], opset: int = 17, ir: int = 8, extra: str = "",
           functions: str = "") -> onnx.ModelProto:
    imports = f'"" : {opset}' + extra
    model = onnx.parser.parse_model(f"<ir_version: {ir}, opset_import: [{imports}]>\n{text}\n{functions}")
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    return model


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input if i.name not in inits}


def _run(model: onnx.ModelProto | Path, feeds, optimize: bool = True) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # no fusion may hide an unimplemented kernel
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()  # a path finds its data
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compress(tmp_path: Path, model: onnx.ModelProto, *args, external: bool = False):
    """Run `compress` on `model` saved in tmp_path; return (result, input path, output path)."""
    src = tmp_path / "in.onnx"
    if external:
        onnx.save(model, src, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="in.onnx.data", size_threshold=0)
    else:
        src.write_bytes(model.SerializeToString())
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    dst = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(dst), *map(str, args)])
    assert "Traceback" not in result.output, result.output
    assert {p.name: _sha(p) for p in tmp_path.iterdir() if p.name in before} == before  # input unchanged
    return result, src, dst


def _assert_compressed(tmp_path: Path, model: onnx.ModelProto, *args, external: bool = False,
                       rtol: float = 0.05) -> onnx.ModelProto:
    """compress exits 0 with a valid output that runs (unfused too) close to the input."""
    result, src, dst = _compress(tmp_path, model, "-q", "--report", tmp_path / "r.json", *args, external=external)
    assert result.exit_code == 0, (result.output, result.exception)
    written = {"out.onnx", "r.json"} | ({"out.onnx.data"} if (tmp_path / "out.onnx.data").exists() else set())
    assert {p.name for p in tmp_path.iterdir()} == {src.name, *([src.name + ".data"] if external else []), *written}
    out = onnx.load(dst)
    onnx.checker.check_model(dst, full_check=True)
    feeds = _feeds(model)
    expected = _run(model if not external else src, feeds)
    for optimize in (True, False):
        for a, b in zip(expected, _run(dst, feeds, optimize), strict=True):
            finite = np.isfinite(a)  # a weight near float32's limit may overflow the input model itself
            assert (np.isfinite(b) == finite).all()
            scale = max(float(np.abs(a[finite]).max(initial=0)), 1e-6)
            np.testing.assert_allclose(b[finite], a[finite], atol=rtol * scale, rtol=0)
    return out


def _assert_refused(tmp_path: Path, model: onnx.ModelProto, *args, match: str) -> str:
    result, src, _ = _compress(tmp_path, model, *args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [src.name]  # nothing left behind
    return lines[0]


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r.json").read_text())


# ------------------------------------------------------------ item 4: bfloat16 / float8 behind Cast

CAST = """agraph (float[2, 16] x) => (float[2, 8] y) {
    wf = Cast <to = 1> (W)
    y = MatMul (x, wf)
}"""

ML_FLOATS = {"bfloat16": ml_dtypes.bfloat16, "float8e4m3fn": ml_dtypes.float8_e4m3fn,
             "float8e5m2": ml_dtypes.float8_e5m2}


@pytest.mark.parametrize("fmt", ["qdq", "float"])
@pytest.mark.parametrize("dtype", sorted(ML_FLOATS))
def test_weights_cast_from_bfloat16_and_float8_are_compressed(tmp_path, dtype, fmt):
    weight = laplace((16, 8), 0.3, 4).astype(ML_FLOATS[dtype])
    model = _model(CAST, {"W": weight}, opset=21, ir=10)
    out = _assert_compressed(tmp_path, model, "--format", fmt)
    assert _report(tmp_path)["layers"][0]["name"] == "W"
    stored = {t.name: t.data_type for t in out.graph.initializer}
    if fmt == "float":  # the dequantized values keep the stored type
        assert stored == {"W": helper.np_dtype_to_tensor_dtype(weight.dtype)}
    else:  # DequantizeLinear's float32 output feeds the Cast
        assert stored["W_scale"] == TensorProto.FLOAT and "W" not in stored


@pytest.mark.parametrize("fmt", ["qdq", "float"])
def test_bfloat16_weights_in_external_data_are_compressed_streaming(tmp_path, fmt):
    model = _model(CAST, {"W": laplace((16, 8), 0.3, 5).astype(ml_dtypes.bfloat16)}, opset=21, ir=10)
    _assert_compressed(tmp_path, model, "--format", fmt, external=True)


def test_inspect_lists_a_float8_weight(tmp_path):
    src = tmp_path / "in.onnx"
    src.write_bytes(_model(CAST, {"W": laplace((16, 8), 0.3, 6).astype(ml_dtypes.float8_e4m3fn)},
                           opset=21, ir=10).SerializeToString())
    result = CliRunner().invoke(main, ["inspect", str(src), "--min-params", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and '"W"' in result.stdout


# ------------------------------------------------------------ item 5: empty weights and outputs

TWO_MATMULS = """agraph (float[2, 16] x, float[2, 0] e) => (float[2, 8] y, float[2, 8] z) {
    y = MatMul (x, W)
    z = MatMul (e, E)
}"""


def test_an_empty_weight_is_skipped_with_its_reason(tmp_path):
    model = _model(TWO_MATMULS, {"W": laplace((16, 8), 0.2, 7), "E": np.zeros((0, 8), np.float32)})
    _assert_compressed(tmp_path, model, "--min-params", "0", "--keep", "none")
    skipped = {s["name"]: s["reason"] for s in _report(tmp_path)["skipped"]}
    assert "empty" in skipped["E"]


def test_a_model_whose_only_weight_is_empty_is_refused(tmp_path):
    model = _model("""agraph (float[2, 0] e) => (float[2, 8] z) { z = MatMul (e, E) }""",
                   {"E": np.zeros((0, 8), np.float32)})
    _assert_refused(tmp_path, model, "--min-params", "0", match="empty")


EMPTY_OUTPUT = """agraph (float[N, 16] x) => (float[N, 0] z) {
    y = MatMul (x, W)
    z = Slice (y, start, end, axis)
}"""


def test_a_model_with_an_empty_output_compresses_and_evaluates(tmp_path):
    ints = {k: np.array([v], np.int64) for k, v in (("start", 0), ("end", 0), ("axis", 1))}
    model = _model(EMPTY_OUTPUT, {"W": laplace((16, 8), 0.2, 8), **ints})
    result, src, dst = _compress(tmp_path, model, "-q")
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(dst, full_check=True)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32))
    result = CliRunner().invoke(main, ["eval", str(src), str(dst), "--data", str(data), "--runs", "0", "-q"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


# ------------------------------------------------------------ item 5: weights near float32's limit

PAIR = """agraph (float[2, 64] x) => (float[2, 32] y, float[2, 32] z) {
    y = MatMul (x, W)
    z = MatMul (x, V)
}"""


def test_a_weight_near_float32s_limit_is_left_as_it_is(tmp_path):
    huge = laplace((64, 32), 0.1, 9)
    huge[0, 0], huge[1, 1] = 3.3e38, -3.4e38
    model = _model(PAIR, {"W": huge, "V": laplace((64, 32), 0.1, 10)})
    for args in ([], ["--prune", "0.5", "--bits", "4"], ["--rate", "8"]):
        folder = tmp_path / str(len(args))
        folder.mkdir()
        out = _assert_compressed(folder, model, "--keep", "none", *args, rtol=0.5)
        assert numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W")).max() == np.float32(3.3e38)
        assert "float32's limit" in {s["name"]: s["reason"] for s in _report(folder)["skipped"]}["W"]


def test_large_weights_whose_float32_mean_overflows_are_solved(tmp_path):
    # |w| up to ~1e36 is below the limit, but 16k of them overflow a float32 sum (the Laplace scale)
    big = (laplace((512, 32), 1.0, 11) * 2e35).clip(-1.2e36, 1.2e36).astype(np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.abs(big).sum(dtype=np.float32))
    assert laplace_scale(big) == pytest.approx(float(np.abs(big.astype(np.float64)).mean()), rel=1e-6)
    text = PAIR.replace("64", "512")
    model = _model(text, {"W": big, "V": laplace((512, 32), 0.1, 12)})
    _assert_compressed(tmp_path, model, "--prune", "0.5", "--bits", "4", "--keep", "none", "--granularity", "channel",
                       rtol=0.6)


def test_the_solver_takes_weights_at_float32s_limit():
    class Layer:
        def __init__(self, name, values):
            self.name, self.values, self.axis, self.groups = name, values, 1, 1
    layers = [Layer("w", (np.clip(laplace((256, 64), 0.3, 13), -1, 1) * 3.3e38).astype(np.float32)),
              Layer("v", laplace((64, 64), 0.1, 14))]
    total = sum(l.values.size for l in layers)
    for config in (OpqConfig(), OpqConfig(prune=0.5, bits=4), OpqConfig(prune=0.9, bits=2, prune_mode="exact")):
        plan = solve_opq(layers, config)
        assert sum(int((~p.mask).sum()) for p in plan.layers) == round(config.prune * total)  # the global ratio
        for layer, p in zip(layers, plan.layers):
            assert np.isfinite(p.step) and p.step >= 0
            values = dequantize(quantize_codes(layer.values, p.mask, p.step, p.keep_survivors), p.step)
            assert np.isfinite(values).all()
            bound = p.step if p.keep_survivors else p.step / 2  # a survivor rounding to 0 gets ±1
            assert np.abs(values - layer.values * p.mask).max() <= bound * (1 + 1e-6)


# ------------------------------------------------------------ item 6: sparse_value, functions, IR 3, new opsets


def test_a_constant_nodes_sparse_value_weight_is_compressed(tmp_path):
    dense = laplace((16, 8), 0.3, 15)
    dense[np.abs(dense) < 0.2] = 0
    index = np.flatnonzero(dense)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(dense.reshape(-1)[index], "Wv"),
                                       numpy_helper.from_array(index.astype(np.int64), "Wi"), list(dense.shape))
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], sparse_value=sparse), helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for fmt in ("qdq", "float"):
        folder = tmp_path / fmt
        folder.mkdir()
        _assert_compressed(folder, model, "--format", fmt)
        assert [l["name"] for l in _report(folder)["layers"]] == ["W"]


LOCAL = """<domain: "robust.local", opset_import: ["" : 17]>
Lin (a, b) => (c) { c = MatMul (a, b) }"""
CALLS_LOCAL = """agraph (float[2, 16] x) => (float[2, 8] y) {
    h = robust.local.Lin (x, W1)
    y = robust.local.Lin (h, W2)
}"""


def test_weights_used_inside_local_functions_are_compressed(tmp_path):
    model = _model(CALLS_LOCAL, {"W1": laplace((16, 16), 0.2, 16), "W2": laplace((16, 8), 0.2, 17)},
                   extra=', "robust.local" : 1', functions=LOCAL)
    onnx.checker.check_model(model, full_check=True)
    out = _assert_compressed(tmp_path, model, "--keep", "none")
    assert not out.functions and {l["name"] for l in _report(tmp_path)["layers"]} == {"W1", "W2"}


def test_a_call_to_a_local_function_of_an_undeclared_domain_is_refused(tmp_path):
    model = _model(CALLS_LOCAL, {"W1": laplace((16, 16), 0.2, 18), "W2": laplace((16, 8), 0.2, 19)},
                   functions=LOCAL)
    _assert_refused(tmp_path, model, match="imports no opset for domain 'robust.local'")


@pytest.mark.parametrize("args", [[], ["--format", "float"], ["--prune", "0.5", "--bits", "4"]])
def test_ir3_opset7_models_whose_initializers_are_inputs_are_compressed(tmp_path, args):
    model = _model("""agraph (float[2, 16] x, float[16, 8] W3) => (float[2, 8] y) { y = MatMul (x, W3) }""",
                   {"W3": laplace((16, 8), 0.2, 20)}, opset=7, ir=3)
    onnx.checker.check_model(model, full_check=True)
    out = _assert_compressed(tmp_path, model, *args, rtol=0.5)
    assert out.ir_version >= 4


CONV = """agraph (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, W)
    y = Relu (c)
}"""


def test_the_newest_opset_compresses_into_a_model_onnxruntime_runs(tmp_path):
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", NEWEST)], ignore_unknown=True)
    model = _model(CONV, {"W": laplace((8, 3, 3, 3), 0.2, 21)}, opset=NEWEST, ir=ir)
    try:
        _run(model, _feeds(model))
    except Exception as exc:  # noqa: BLE001 - an onnxruntime older than this onnx
        pytest.skip(f"this onnxruntime does not run opset {NEWEST} at all ({exc})")
    out = _assert_compressed(tmp_path, model, "--no-int4")  # also run unfused: DequantizeLinear needs a kernel
    version = next(e.version for e in out.opset_import if e.domain == "")
    runs_newest = all(opset_module.dequantize_failure(NEWEST, "int8", axis) is None for axis in (False, True))
    assert version == NEWEST if runs_newest else version < NEWEST


@pytest.fixture
def dequantize_up_to_19(monkeypatch):
    """An onnxruntime whose DequantizeLinear stops at opset 19 (older ones do stop somewhere)."""
    real = opset_module.dequantize_failure
    monkeypatch.setattr(opset_module, "dequantize_failure",
                        lambda o, c, a: "no kernel (simulated)" if o > 19 else real(o, c, a))


def test_an_opset_past_onnxruntimes_dequantize_is_lowered_when_no_node_changes(tmp_path, dequantize_up_to_19):
    model = _model(CONV, {"W": laplace((8, 3, 3, 3), 0.2, 22)}, opset=21, ir=10)
    out = _assert_compressed(tmp_path, model, "--no-int4")
    assert [(e.domain, e.version) for e in out.opset_import] == [("", 19)]


def test_an_opset_past_onnxruntimes_dequantize_is_refused_when_a_node_would_change(tmp_path, dequantize_up_to_19):
    model = _model(CAST, {"W": laplace((16, 8), 0.3, 23).astype(ml_dtypes.bfloat16)}, opset=21, ir=10)
    line = _assert_refused(tmp_path, model, "--no-int4", match="DequantizeLinear(21)")
    assert "Cast" in line and "--format float" in line
    _assert_compressed(tmp_path, model, "--format", "float")
