"""The qdq, float, packed and int8-activation outputs of the bundled lenet5 in OpenVINO, against onnxruntime.

OpenVINO (CPU plugin, f32 inference precision, so its bf16 default on CPUs that
have it does not blur the comparison) must give onnxruntime's outputs for the
qdq and float formats and for a packed model unpacked to float. The packed file
itself it miscomputes: its decoder alone it runs right, but once a layer reads
the decoded weight the results are wrong (2026.4; checked per tensor), so that
case is a strict xfail that says when a release fixes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.runtime.sessions import session
from onnxjpq.testing import run

ov = pytest.importorskip("openvino")
MODELS = Path(__file__).resolve().parents[2] / "models"
OPTIONS = ["--prune", "0.9", "--bits", "3"]


def _feeds() -> dict[str, np.ndarray]:
    with np.load(MODELS / "lenet5_test.npz") as data:
        return {k: data[k][:64] for k in data.files if k != "labels"}


def _openvino(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return next(iter(compiled(feeds).values()))


def _written(tmp_path: Path, fmt: str) -> Path:
    out = tmp_path / f"{fmt}.onnx"
    args = ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q", "--format", fmt, *OPTIONS]
    if fmt == "unpacked":
        packed = _written(tmp_path, "packed")
        args = ["unpack", str(packed), "-o", str(out), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["qdq", "float", "unpacked",
                                 pytest.param("packed", marks=pytest.mark.xfail(
                                     strict=True, reason="OpenVINO 2026.4 miscomputes the packed decoder "
                                                         "once a layer reads its output"))])
def test_openvino_gives_onnxruntimes_outputs(tmp_path, fmt):
    path, feeds = _written(tmp_path, fmt), _feeds()
    want, got = run(str(path), feeds)[0], _openvino(path, feeds)
    assert (got.argmax(1) == want.argmax(1)).all()
    # qdq: OpenVINO runs the int8 weights through its own dequantization, about 1 % of the logits apart
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 if fmt == "qdq" else 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("container", ["int8", "uint8"])
def test_openvino_runs_the_static_int8_output_as_onnxruntime_does(tmp_path, container):
    """The full QDQ model of --activations int8, with either weight container, in OpenVINO, against
    onnxruntime computing what the QDQ pairs say (its exact session: fused into QLinearConv on x86
    without VNNI, int8 weights saturate 16-bit sums and the logits move by up to 3.7 of 30)."""
    out, calib = tmp_path / "int8.onnx", tmp_path / "calib.npz"
    with np.load(MODELS / "lenet5_train.npz") as data:
        np.savez(calib, **{k: data[k][:64] for k in data.files if k != "labels"})
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q",
                                       "--activations", "int8", "--calib", str(calib), "--act-weights", container])
    assert result.exit_code == 0, result.output
    feeds = _feeds()
    want = session(out, exact=True).run(None, feeds)[0]
    got = _openvino(out, feeds)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
