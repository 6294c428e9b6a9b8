"""--activations auto: static and dynamic int8 built from the same codes, measured, one kept."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"


def _compress(tmp_path: Path, model: str, *options: str):
    out, report = tmp_path / "auto.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["compress", str(MODELS / model), "-o", str(out), "-q", "--report", str(report),
                                       "--activations", "auto", *options])
    return result, out, report


@pytest.mark.slow
@pytest.mark.parametrize("model, data", [("lenet5.onnx", "lenet5_train.npz"), ("lenet300.onnx", "lenet300_train.npz")])
def test_auto_builds_both_paths_and_keeps_the_faster_that_meets_the_target(tmp_path, model, data):
    result, out, report_path = _compress(tmp_path, model, "--calib", str(MODELS / data))
    assert result.exit_code == 0, result.output
    info = json.loads(report_path.read_text())["settings"]["activations"]
    auto = info["auto"]
    assert set(auto["measured"]) == {"static", "dynamic"} and auto["not_built"] == {}
    passing = [m for m, v in auto["measured"].items() if v["met"]]
    assert passing, auto
    assert auto["chosen"] == min(passing, key=lambda m: auto["measured"][m]["latency_ratio"])
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert ("DynamicQuantizeLinear" in ops) == (auto["chosen"] == "dynamic")
    assert ("QuantizeLinear" in ops) == (auto["chosen"] == "static")
    notes = json.loads(report_path.read_text())["settings"]["notes"]
    assert any(n.startswith(f"--activations auto chose {auto['chosen']}") for n in notes)
    # one timing: the report's latency is the one the choice was made on
    assert info["latency_ratio"] == pytest.approx(auto["measured"][auto["chosen"]]["latency_ratio"])
    assert sum("measured on the calibration inputs" in n for n in notes) == 1


def test_auto_needs_calibration_data(tmp_path):
    result, out, _ = _compress(tmp_path, "lenet5.onnx")
    assert result.exit_code == 2 and not out.exists()
    assert result.output == ("error: activation quantization needs calibration data (--calib DATA.npz); auto "
                             "measures static and dynamic int8 on it\n")

