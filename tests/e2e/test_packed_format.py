"""`compress --format packed`: the same outputs as the float format, in a smaller file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.testing import packed_size_bound, run

MODELS = Path(__file__).resolve().parents[2] / "models"


def _compress(tmp_path: Path, name: str, *options: str, model: str = "lenet5") -> Path:
    out = tmp_path / name
    result = CliRunner().invoke(main, ["compress", str(MODELS / f"{model}.onnx"), "-o", str(out), "-q", *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("options, smaller", [(["--prune", "0.9", "--bits", "3"], True), (["--rate", "16"], True),
                                              ([], False)])  # dense 8-bit codes: the decoder costs more
def test_packed_outputs_equal_the_float_format_in_a_smaller_file_than_qdq(tmp_path, options, smaller):
    packed = _compress(tmp_path, "packed.onnx", "--format", "packed", *options)
    flt = _compress(tmp_path, "float.onnx", "--format", "float", *options)
    qdq = _compress(tmp_path, "qdq.onnx", *options)
    onnx.checker.check_model(onnx.load(packed), full_check=True)
    x = np.load(MODELS / "lenet5_test.npz")
    feeds = {k: x[k][:64] for k in x.files if k != "labels"}
    np.testing.assert_array_equal(run(str(packed), feeds)[0], run(str(flt), feeds)[0])
    assert (packed.stat().st_size < qdq.stat().st_size) is smaller


@pytest.mark.slow
def test_packed_output_is_byte_identical_on_a_rerun(tmp_path):
    a = _compress(tmp_path, "a.onnx", "--format", "packed", "--prune", "0.5", "--bits", "4")
    b = _compress(tmp_path, "b.onnx", "--format", "packed", "--prune", "0.5", "--bits", "4")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lenet5", "lenet300"])
@pytest.mark.parametrize("options", ["--prune 0.5 --bits 4", "--prune 0.8 --bits 4", "--prune 0.9 --bits 3", "",
                                     "--rate 8", "--rate 16"])
def test_packed_file_holds_what_the_report_counts(tmp_path, model, options):
    """The file is at most 1.1 x (uncompressed tensors + storage bits / 8) + 8 KiB (issue 12)."""
    out = _compress(tmp_path, "packed.onnx", "--format", "packed", "--report", str(tmp_path / "r.json"),
                    *options.split(), model=model)
    totals = json.loads((tmp_path / "r.json").read_text())["totals"]
    assert totals["bytes_out"] == out.stat().st_size <= packed_size_bound(totals), totals


@pytest.mark.slow
@pytest.mark.parametrize("kb", [16, 40])
def test_size_kb_budgets_the_packed_file(tmp_path, kb):
    out = _compress(tmp_path, "packed.onnx", "--format", "packed", "--size-kb", str(kb),
                    "--report", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert out.stat().st_size <= kb * 1024 and report["totals"]["size_kb_budget"] == kb
    assert any(note.startswith(f"--size-kb {kb} budgets the packed file") for note in report["settings"]["notes"])


def test_size_kb_below_the_smallest_packed_file_exits_2_naming_it(tmp_path):
    out = tmp_path / "packed.onnx"
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q",
                                       "--format", "packed", "--size-kb", "8"])
    assert result.exit_code == 2 and not out.exists()
    assert "the smallest packed file onnxjpq can write is about" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
