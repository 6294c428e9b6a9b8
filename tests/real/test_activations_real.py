"""--activations int8 on real pretrained CNNs (issue 13): exit 0 with the decisions kept, or one
line and exit 2, never a traceback. Calibration: 16 samples of seed 1; evaluation on the
registry's seed-0 samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

# measured (python -m onnxjpq compress MODEL --activations int8 --calib 16 samples): ppocr_cls
# 1.000 top-1 agreement, crepe 1.000 pitch agreement, orientation 1.000, ppocr_rec 0.997 character
# agreement, ppocr_det 1.000 box F1; basic-pitch's int8 model, written by onnxruntime's quantizer,
# does not load in onnxruntime (a weight Transpose)
KEEPS = {"ppocr_cls": 0.99, "crepe": 0.99, "orientation": 0.99, "ppocr_rec": 0.99, "ppocr_det": 0.99}
REFUSED = {"basicpitch": "error: onnxruntime cannot load the model its quantizer wrote:"}


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({**KEEPS, **REFUSED}))
def test_int8_activations_keep_the_decisions_or_refuse_in_one_line(name, cnn_case, tmp_path):
    case = cnn_case(name)
    calib, out = tmp_path / "calib.npz", tmp_path / "int8.onnx"
    np.savez(calib, **case.entry.data(16, 1))
    result = CliRunner().invoke(main, ["compress", str(case.path), "-o", str(out), "-q", "--calib", str(calib),
                                       "--activations", "int8"])
    assert "Traceback" not in result.output
    if name in REFUSED:
        assert result.exit_code == 2 and result.output.startswith(REFUSED[name]), result.output
        assert result.output.count("\n") == 1 and not out.exists()
        return
    assert result.exit_code == 0, result.output
    metric = case.entry.evaluate(case.path, out, case.data, case.reference)
    assert metric[case.entry.headline] >= KEEPS[name], metric


@pytest.mark.real
@pytest.mark.slow
def test_silero_exports_get_a_dynamic_model_or_one_line(tmp_path):
    """silero-vad has no MatMul/Gemm weight, and onnxruntime's dynamic quantizer wrote its If-branched
    export with nodes out of order (onnx.checker refused it); each export now exits 0 or in one line."""
    from onnxjpq.zoo import silero

    for name in silero.MODEL_NAMES:
        path = silero.model_path(name)
        if path is None:
            continue
        out = tmp_path / f"{name}.dynamic.onnx"
        result = CliRunner().invoke(main, ["compress", str(path), "-o", str(out), "-q", "--activations", "dynamic"])
        assert "Traceback" not in result.output, (name, result.output)
        if result.exit_code == 0:
            onnx.checker.check_model(onnx.load(str(out)))
        else:
            assert result.exit_code == 2 and result.output.count("\n") == 1 and not out.exists(), (name, result.output)


@pytest.mark.real
@pytest.mark.slow
def test_auto_on_a_model_with_no_int8_path_is_one_line(cnn_case, tmp_path):
    """basic-pitch: onnxruntime rejects its static quantizer's output, and it has no MatMul/Gemm weight."""
    case = cnn_case("basicpitch")
    calib, out = tmp_path / "calib.npz", tmp_path / "auto.onnx"
    np.savez(calib, **case.entry.data(16, 1))
    result = CliRunner().invoke(main, ["compress", str(case.path), "-o", str(out), "-q", "--calib", str(calib),
                                       "--activations", "auto"])
    assert result.exit_code == 2 and not out.exists(), result.output
    assert result.output.startswith("error: no int8 path runs on this model: static: onnxruntime cannot load")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
