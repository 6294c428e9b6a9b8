"""What compress says matches what it did (issue 15, item 18): float holds the values qdq
dequantizes to, and weights rounded to zero are not called pruned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.testing import run

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5 = MODELS / "lenet5.onnx"


def test_float_format_holds_the_values_qdq_dequantizes_to(tmp_path):
    qdq, flt = tmp_path / "q.onnx", tmp_path / "f.onnx"
    for path, fmt in ((qdq, "qdq"), (flt, "float")):
        result = CliRunner().invoke(main, ["compress", str(LENET5), "-o", str(path), "-q", "--prune", "0.5",
                                           "--bits", "4", "--format", fmt])
        assert result.exit_code == 0, result.output
    with np.load(MODELS / "lenet5_test.npz") as data:
        feeds = {"input": data["input"][:64]}
    np.testing.assert_allclose(run(str(flt), feeds)[0], run(str(qdq), feeds)[0], rtol=1e-5, atol=1e-5)


def test_bits_alone_says_the_zeros_are_rounding_not_pruning(tmp_path):
    result = CliRunner().invoke(main, ["compress", str(LENET5), "-o", str(tmp_path / "o.onnx"), "--bits", "4"])
    assert result.exit_code == 0, result.output
    assert "pruned none (" in result.output and "% rounded to zero)" in result.output
    result = CliRunner().invoke(main, ["compress", str(LENET5), "-o", str(tmp_path / "p.onnx"), "--prune", "0.5"])
    assert "pruned 5" in result.output and "rounded to zero" not in result.output
