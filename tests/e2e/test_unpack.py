"""`onnxjpq unpack`: a packed model back with float or QDQ weights, as `compress` writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.testing import run

MODELS = Path(__file__).resolve().parents[2] / "models"


def _cli(*args: str):
    return CliRunner().invoke(main, [*args, "-q"])


def _compress(tmp_path: Path, model: str, fmt: str, options: list[str]) -> Path:
    out = tmp_path / f"{model}.{fmt}.onnx"
    result = _cli("compress", str(MODELS / f"{model}.onnx"), "-o", str(out), "--format", fmt, *options)
    assert result.exit_code == 0, result.output
    return out


def _outputs(path: Path, model: str) -> np.ndarray:
    with np.load(MODELS / f"{model}_test.npz") as data:
        feeds = {k: data[k][:64] for k in data.files if k != "labels"}
    return run(str(path), feeds)[0]


@pytest.mark.slow
@pytest.mark.parametrize("model, options", [("lenet5", ["--prune", "0.9", "--bits", "3"]), ("lenet5", ["--rate", "16"]),
                                            ("lenet5", []), ("lenet300", ["--prune", "0.5", "--bits", "4"])])
@pytest.mark.parametrize("fmt", ["float", "qdq"])
def test_unpack_gives_the_outputs_of_the_format_compress_writes(tmp_path, model, options, fmt):
    packed = _compress(tmp_path, model, "packed", options)
    direct = _compress(tmp_path, model, fmt, options)
    out = tmp_path / "unpacked.onnx"
    result = _cli("unpack", str(packed), "-o", str(out), "--format", fmt)
    assert result.exit_code == 0, result.output
    unpacked = onnx.load(str(out))
    onnx.checker.check_model(unpacked, full_check=True)
    assert not any(n.op_type in ("BitShift", "BitwiseOr", "ScatterElements") for n in unpacked.graph.node)
    np.testing.assert_array_equal(_outputs(out, model), _outputs(direct, model))


@pytest.mark.slow
def test_unpack_is_byte_identical_on_a_rerun(tmp_path):
    packed = _compress(tmp_path, "lenet5", "packed", ["--rate", "16"])
    outs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for out in outs:
        assert _cli("unpack", str(packed), "-o", str(out), "--format", "qdq").exit_code == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_unpack_refuses_a_model_without_packed_weights_and_writes_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    result = _cli("unpack", str(MODELS / "lenet5.onnx"), "-o", str(out))
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip() == "error: no packed weight found: the model was not written by " \
                                    "`compress --format packed`"


def test_unpack_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes((MODELS / "lenet5.onnx").read_bytes())
    result = _cli("unpack", str(src), "-o", str(src))
    assert result.exit_code == 2 and "is the input file" in result.output
    assert src.read_bytes() == (MODELS / "lenet5.onnx").read_bytes()


@pytest.mark.slow
def test_a_packed_model_given_to_compress_is_sent_to_unpack_and_unpacked_it_compresses(tmp_path):
    packed = _compress(tmp_path, "lenet5", "packed", ["--rate", "8"])
    again = tmp_path / "again.onnx"
    result = _cli("compress", str(packed), "-o", str(again))
    assert result.exit_code == 2 and not again.exists()
    assert result.output.strip() == ("error: the model's weights are packed (compress --format packed): "
                                     "run `onnxjpq unpack` on it first")
    unpacked = tmp_path / "unpacked.onnx"
    assert _cli("unpack", str(packed), "-o", str(unpacked)).exit_code == 0
    assert _cli("compress", str(unpacked), "-o", str(again)).exit_code == 0
