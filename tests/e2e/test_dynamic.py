"""`--activations dynamic`: onnxruntime's dynamic int8 MatMul/Gemm graph holding onnxjpq's codes (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxjpq.cli import main
from onnxjpq.testing import run
from onnxjpq.workflows.dynamic import _ort_layout

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET300, LENET5 = MODELS / "lenet300.onnx", MODELS / "lenet5.onnx"


def _compress(tmp_path: Path, src: Path, name: str, *options) -> tuple[Path, dict]:
    out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--report", str(report),
                                       *map(str, options)])
    assert result.exit_code == 0, result.output
    return out, json.loads(report.read_text())


def _dequantized(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each int8 weight times its scale, in the original weight's orientation, by original name."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for name, codes in inits.items():
        if name.endswith("_quantized") and codes.dtype == np.int8:
            base = name.removesuffix("_quantized")
            values = codes.astype(np.float32) * inits[f"{base}_scale"]
            out[base.removesuffix("_Transposed")] = values.T if base.endswith("_Transposed") else values
    return out


@pytest.mark.parametrize("options", [[], ["--rate", "8"], ["--prune", "0.5", "--bits", "5"]])
def test_the_int8_weights_are_onnxjpqs_codes(options, tmp_path):
    dyn, report = _compress(tmp_path, LENET300, "dyn", "--activations", "dynamic", *options)
    flt, _ = _compress(tmp_path, LENET300, "flt", "--format", "float", "--no-int4", *options)
    model = onnx.load(str(dyn))
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) == 3
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(flt)).graph.initializer}
    fed = _dequantized(model)
    assert set(fed) == {row["name"] for row in report["layers"]}
    for name, values in fed.items():
        np.testing.assert_allclose(values, floats[name], rtol=1e-6, atol=0)
    assert all(row["container"] == "int8 (dynamic)" for row in report["layers"])
    assert report["settings"]["activations"]["int8_layers"] == 3
    with np.load(MODELS / "lenet300_test.npz") as data:
        feeds = {"input": data["input"][:64]}
    expected, got = run(str(flt), feeds)[0], run(str(dyn), feeds)[0]
    assert (expected.argmax(1) == got.argmax(1)).mean() >= 0.95
    assert dyn.stat().st_size <= 0.3 * LENET300.stat().st_size


def test_with_calibration_data_fidelity_and_latency_are_measured(tmp_path):
    _, report = _compress(tmp_path, LENET300, "dyn", "--activations", "dynamic", "--calib",
                          MODELS / "lenet300_test.npz")
    info = report["settings"]["activations"]
    assert info["fp32_snr_db"] > 15 and info["latency_ratio"] > 0 and info["threads"] == 1
    assert any(n.startswith("dynamic int8 measured on the calibration inputs") for n in report["settings"]["notes"])


def test_conv_weights_stay_float_and_the_note_says_so(tmp_path):
    _, report = _compress(tmp_path, LENET5, "dyn", "--activations", "dynamic")
    info = report["settings"]["activations"]
    assert info["int8_layers"] == sum(row["op"] in ("MatMul", "Gemm") for row in report["layers"]) > 0
    assert info["float_layers"] and any("stay float32" in n for n in report["settings"]["notes"])


@pytest.mark.parametrize("options, match", [
    (["--act-snr", "30"], "--act-snr only applies with --activations int8"),
    (["--max-drop", "1", "--data", str(MODELS / "lenet300_test.npz")], "--max-drop searches weight compression"),
])
def test_options_dynamic_cannot_use_are_refused(options, match, tmp_path):
    result = CliRunner().invoke(main, ["compress", str(LENET300), "-o", str(tmp_path / "o.onnx"),
                                       "--activations", "dynamic", *options])
    assert result.exit_code == 2 and match in result.output, result.output
    assert not (tmp_path / "o.onnx").exists()


def test_ort_layout_transposes_and_refuses_steps_that_are_not_per_column():
    codes = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    steps = np.array([[0.5], [0.25]], np.float32)  # per row of a transB weight: per output column once transposed
    out = _ort_layout(codes, steps, True, [3, 2], [2])
    assert out is not None and out[0].shape == (3, 2) and out[1].tolist() == [0.5, 0.25]
    assert _ort_layout(codes, steps, False, [2, 3], [3]) is None  # rows differ: no per-column scale fits
    shared = _ort_layout(codes, np.float32(0.5), False, [2, 3], [])
    assert shared is not None and shared[1].shape == ()


def test_only_the_nodes_of_compressed_weights_are_quantized(tmp_path):
    """A float16 MatMul onnxjpq leaves alone: onnxruntime's dynamic quantizer would have written
    a DynamicQuantizeLinear on its float16 input, which onnxruntime then rejects."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "W"], ["z"]),
         helper.make_node("Cast", ["z"], ["zh"], to=TensorProto.FLOAT16), helper.make_node("MatMul", ["zh", "V"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])],
        [numpy_helper.from_array(rng.laplace(size=(16, 8)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.laplace(size=(8, 4)).astype(np.float16), "V")])
    src, out = tmp_path / "mixed.onnx", tmp_path / "out.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--activations", "dynamic",
                                       "--min-params", "1"])
    assert result.exit_code == 0, result.output
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("MatMul") == 1
    x = rng.standard_normal((4, 16)).astype(np.float16)
    assert run(str(out), {"x": x})[0].shape == (4, 4)
