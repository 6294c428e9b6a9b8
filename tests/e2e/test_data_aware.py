"""Data-aware compression (--calib in every mode) on the bundled models, through the CLI.

The bundled models are calibrated on their training split and scored on the test
split they never saw. lenet5 fp32: 98.22 %; lenet300 fp32: see the fixture run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.runtime.data import Dataset, load_dataset
from onnxjpq.runtime.sessions import accuracy, predict, session
from onnxjpq.testing import laplace, make_model
from onnxjpq.workflows.data_aware import DataAwareConfig, compress_data_aware

MODELS = Path(__file__).resolve().parents[2] / "models"


def compress(tmp_path, name: str, *options: str, out: str = "out.onnx"):
    dst = tmp_path / out
    report = tmp_path / f"{out}.json"
    result = CliRunner().invoke(main, ["compress", str(MODELS / f"{name}.onnx"), "-o", str(dst), "--report",
                                       str(report), "-q", *options])
    assert result.exit_code == 0, (result.output, result.exception)
    return dst, json.loads(report.read_text())


def test_accuracy(name: str, path) -> float:
    data = load_dataset(MODELS / f"{name}_test.npz", session(MODELS / f"{name}.onnx"))
    return accuracy(predict(session(path), data), data.labels)


test_accuracy.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("name, rate", [("lenet5", 24), ("lenet300", 24)])  # data-free: 93.78 %, 90.00 %
def test_data_aware_beats_data_free_at_equal_rate(tmp_path, name, rate):
    calib = str(MODELS / f"{name}_train.npz")
    free, free_report = compress(tmp_path, name, "--rate", str(rate), out="free.onnx")
    aware, aware_report = compress(tmp_path, name, "--rate", str(rate), "--calib", calib, out="aware.onnx")
    assert aware_report["totals"]["storage_rate"] >= rate * 0.999
    assert free_report["totals"]["storage_rate"] >= rate * 0.999
    fp32 = test_accuracy(name, MODELS / f"{name}.onnx")
    aware_acc, free_acc = test_accuracy(name, aware), test_accuracy(name, free)
    assert aware_acc > free_acc
    assert aware_acc >= fp32 - 2.0, (aware_acc, free_acc, fp32)


def test_lenet5_at_rate_32_stays_within_a_point_of_fp32(tmp_path):
    """Issue 11's bundled-model acceptance: post-training, no fine-tuning (data-free: 38.89 %)."""
    calib = str(MODELS / "lenet5_train.npz")
    out, report = compress(tmp_path, "lenet5", "--rate", "32", "--calib", calib)
    assert report["totals"]["storage_rate"] >= 32 * 0.999
    fp32 = test_accuracy("lenet5", MODELS / "lenet5.onnx")
    assert test_accuracy("lenet5", out) >= fp32 - 1.0


def test_prune_and_bits_with_calib_is_data_aware_and_keeps_accuracy(tmp_path):
    calib = str(MODELS / "lenet5_train.npz")
    out, report = compress(tmp_path, "lenet5", "--prune", "0.5", "--bits", "4", "--calib", calib)
    section = report["data_aware"]
    assert section["solver"] == "gptq" and section["sequential"]
    solvers = {row["name"]: row["solver"] for row in section["layers"]}
    assert solvers["conv1.weight"] in ("mse-grid", "adaround")  # 9 inputs per output: rounding, not GPTQ
    assert solvers["fc1.weight"] == "sparsegpt"
    for row in section["layers"]:
        assert row["solve_error"] is not None and row["measured_error"] is not None
        assert row["target_error"] <= row["target_rtn_error"] + 1e-12  # never worse than RTN on its target
    assert report["totals"]["prune_ratio"] > 0.35
    assert test_accuracy("lenet5", out) >= 97.5


def test_the_report_lists_the_solver_and_errors_of_every_layer(tmp_path):
    _, report = compress(tmp_path, "lenet300", "--bits", "4", "--calib", str(MODELS / "lenet300_train.npz"),
                         "--solver", "rtn", "--independent")
    section = report["data_aware"]
    assert (section["solver"], section["sequential"], section["stages"]) == ("rtn", False, 1)
    assert [row["name"] for row in section["layers"]] == [row["name"] for row in report["layers"]]
    for row in section["layers"]:
        assert row["solver"] == "rtn" and row["bits"] in (4, 8)
        assert 0 <= row["measured_error"] < 0.1
    assert 0 <= section["relative_output_error"] < 0.1


def test_the_same_input_and_calibration_data_give_the_same_bytes(tmp_path):
    calib = str(MODELS / "lenet5_train.npz")
    first, _ = compress(tmp_path, "lenet5", "--rate", "16", "--calib", calib, out="a.onnx")
    second, _ = compress(tmp_path, "lenet5", "--rate", "16", "--calib", calib, out="b.onnx")
    assert first.read_bytes() == second.read_bytes()


def test_solver_flags_need_calibration_data(tmp_path):
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--solver", "rtn"])
    assert result.exit_code == 2
    assert "give --calib" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_max_drop_searches_with_the_data_aware_solve(tmp_path):
    _, report = compress(tmp_path, "lenet300", "--max-drop", "1", "--data", str(MODELS / "lenet300_test.npz"),
                         "--calib", str(MODELS / "lenet300_train.npz"))
    assert report["settings"]["method"] == "data-aware-gptq"
    assert report["search"]["evaluations"][0]["ok"]


BIASLESS = """
agraph (float[N, 12] x) => (float[N, 6] y) {
    y = MatMul (x, W)
}"""


def test_bias_correction_zeroes_the_mean_output_error_on_the_calibration_data():
    """Independent capture (the target is the fp32 mean of the same inputs): a MatMul without
    bias gets an Add whose constant cancels the mean output error of the compressed weight."""
    rng = np.random.default_rng(0)
    model = make_model(BIASLESS, {"W": laplace((12, 6), 0.3)})
    x = (rng.standard_normal((256, 12)) + 1.5).astype(np.float32)  # a mean the rounding error meets
    calib = Dataset({"x": x}, None)
    from onnxjpq import OpqConfig, OutputConfig, Selection
    out, report = compress_data_aware(model, OpqConfig(bits=3), Selection(min_params=0, keep=()), OutputConfig(),
                                      calib, DataAwareConfig(sequential=False, solver="rtn", samples=256))
    assert [n.op_type for n in out.graph.node].count("Add") == 1
    assert report["data_aware"]["layers"][0]["bias_corrected"]
    ref, got = exact_run(model, x), exact_run(out, x)
    mean_error = np.abs((got - ref).mean(axis=0))
    assert mean_error.max() < 1e-4 * np.abs(ref).mean()
    _, plain = compress_data_aware(model, OpqConfig(bits=3), Selection(min_params=0, keep=()), OutputConfig(),
                                   calib, DataAwareConfig(sequential=False, solver="rtn", bias_correction=False))
    assert not plain["data_aware"]["layers"][0]["bias_corrected"]


def exact_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Outputs with basic optimizations only: the extended level turns DequantizeLinear + MatMul
    into MatMulNBits, which quantizes the activations (tests/graph/test_rewrite.py)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_the_input_model_is_not_modified(tmp_path):
    before = (MODELS / "lenet300.onnx").read_bytes()
    compress(tmp_path, "lenet300", "--rate", "12", "--calib", str(MODELS / "lenet300_train.npz"))
    assert (MODELS / "lenet300.onnx").read_bytes() == before
    onnx.checker.check_model(onnx.load(str(tmp_path / "out.onnx")))
