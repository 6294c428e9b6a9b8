"""The command line: compress / inspect, the report it writes, and refusals of bad input.

A user error must end with status 2, one `error: ...` line on stderr, no
traceback, no output written and the input untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.testing import run

TOTALS_KEYS = {"params", "nonzero", "prune_ratio", "avg_bits", "rate", "storage_rate", "bytes_in", "bytes_out"}
LAYER_KEYS = {"name", "op", "shape", "params", "prune_ratio", "bits", "step", "laplace_scale"}
ONNXJPQ = Path(sys.executable).with_name("onnxjpq")


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compress(src, dst, *options, report=None):
    args = ["compress", src, "-o", dst, "--prune", "0.5", "--bits", "4", *options]
    if report is not None:
        args += ["--report", report]
    return _invoke(*args)


# --------------------------------------------------------------------------- compress


def test_compress_writes_the_model_and_a_report_with_totals_and_layers(mlp_path, mlp_feeds, tmp_path):
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    result = _compress(mlp_path, out, report=report_path)
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(out)))
    assert run(onnx.load(str(out)), mlp_feeds)[0].shape == (2, 4)
    report = json.loads(report_path.read_text())
    assert TOTALS_KEYS <= set(report["totals"])
    assert report["totals"]["bytes_in"] == mlp_path.stat().st_size
    assert report["totals"]["bytes_out"] == out.stat().st_size
    assert report["totals"]["prune_ratio"] == pytest.approx(0.5, abs=0.01)
    assert [layer["name"] for layer in report["layers"]] == ["W1", "W2", "W3"]
    for layer in report["layers"]:
        assert LAYER_KEYS <= set(layer)
    assert report["settings"]["config"]["prune"] == 0.5


def test_compress_prints_the_table_and_the_output_path(mlp_path, tmp_path):
    out = tmp_path / "out.onnx"
    result = _compress(mlp_path, out)
    assert result.exit_code == 0
    assert "per-layer compression" in result.stderr
    assert f"wrote {out}" in result.stderr


def test_quiet_compress_prints_nothing(mlp_path, tmp_path):
    result = _compress(mlp_path, tmp_path / "out.onnx", "-q")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


def test_two_identical_runs_write_byte_identical_files(mlp_path, tmp_path):
    for name in ("a", "b"):
        result = _compress(mlp_path, tmp_path / f"{name}.onnx", "-q", report=tmp_path / f"{name}.json")
        assert result.exit_code == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_runs_in_processes_with_different_hash_seeds_write_identical_files(mlp_path, tmp_path):
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.onnx"
        proc = subprocess.run([str(ONNXJPQ), "compress", str(mlp_path), "-o", str(out), "--prune", "0.5",
                               "--bits", "4", "-q"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_format_and_int4_options_reach_the_output(mlp_path, tmp_path):
    out = tmp_path / "out.onnx"
    assert _compress(mlp_path, out, "-q", "--format", "qdq", "--no-int4").exit_code == 0
    types = {t.data_type for t in onnx.load(str(out)).graph.initializer if t.name.endswith("_quantized")}
    assert types == {onnx.TensorProto.INT8}
    assert _compress(mlp_path, out, "-q", "--format", "float").exit_code == 0
    assert not any(n.op_type == "DequantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_output_files_get_the_usual_permissions(mlp_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert _compress(mlp_path, out, "-q", report=report).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    for path in (out, report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------------------- inspect


def test_inspect_json_parses_and_lists_the_layers(mlp_path):
    result = _invoke("inspect", mlp_path, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert [layer["name"] for layer in info["layers"]] == ["W1", "W2", "W3"]
    assert [layer["channel_axis"] for layer in info["layers"]] == [1, 1, 1]
    assert info["params"] == 16 * 16 + 16 * 32 + 32 * 4


def test_inspect_reports_weights_below_min_params_as_skipped(mlp_path):
    info = json.loads(_invoke("inspect", mlp_path, "--json", "--min-params", "300").stdout)
    assert [layer["name"] for layer in info["layers"]] == ["W2"]
    assert {s["name"] for s in info["skipped"]} == {"W1", "W3"}


def test_inspect_prints_a_table(mlp_path):
    result = _invoke("inspect", mlp_path)
    assert result.exit_code == 0
    assert "compressible weights" in result.stderr and "W2" in result.stderr


# ------------------------------------------------------------------------ bad input


def _random_bytes(tmp_path, _valid):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _text(tmp_path, _valid):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not an ONNX model\n")
    return path


def _truncated(tmp_path, valid):
    path = tmp_path / "truncated.onnx"
    data = valid.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {"random_bytes": _random_bytes, "text": _text, "truncated": _truncated}


def _assert_refused(result, out: Path, report: Path | None = None, match: str | None = None):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    if match is not None:
        assert match in lines[0]
    assert not out.exists()
    if report is not None:
        assert not report.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_unreadable_input_is_refused(kind, tmp_path, lenet5_path):
    src = BAD_FILES[kind](tmp_path, lenet5_path)
    before = _sha256(src)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    _assert_refused(_compress(src, out, report=report), out, report, match="not a readable ONNX file")
    assert _sha256(src) == before


def test_model_without_a_compressible_layer_is_refused(no_layer_path, tmp_path):
    before = _sha256(no_layer_path)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    _assert_refused(_compress(no_layer_path, out, report=report), out, report, match="no compressible layer")
    assert _sha256(no_layer_path) == before


@pytest.mark.parametrize("option, value, match", [
    ("--prune", "1.2", "prune ratio"),
    ("--prune", "-0.1", "prune ratio"),
    ("--bits", "1", "bits"),
    ("--bits", "9", "bits"),
    ("--min-params", "-1", "--min-params"),
])
def test_out_of_range_option_is_refused(option, value, match, mlp_path, tmp_path):
    before = _sha256(mlp_path)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = _invoke("compress", mlp_path, "-o", out, "--report", report, option, value)
    _assert_refused(result, out, report, match=match)
    assert _sha256(mlp_path) == before


def test_output_equal_to_input_is_refused(mlp_path):
    before = _sha256(mlp_path)
    result = _compress(mlp_path, mlp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: output {mlp_path} is the input file; "
                                                  "choose another path"]
    assert _sha256(mlp_path) == before


def test_report_path_equal_to_input_is_refused(mlp_path, tmp_path):
    before = _sha256(mlp_path)
    out = tmp_path / "out.onnx"
    _assert_refused(_compress(mlp_path, out, report=mlp_path), out, match="is the input file")
    assert _sha256(mlp_path) == before


def test_missing_input_file_is_refused(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    _assert_refused(_compress(tmp_path / "missing.onnx", out, report=report), out, report,
                    match="no such file")


def test_output_in_a_missing_folder_is_refused(mlp_path, tmp_path):
    out = tmp_path / "nowhere" / "out.onnx"
    result = _compress(mlp_path, out)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "does not exist" in result.stderr
    assert not out.parent.exists()


def test_inspect_of_a_non_onnx_file_is_refused(tmp_path):
    src = _text(tmp_path, None)
    result = _invoke("inspect", src, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[0].startswith("error: ")


@pytest.mark.parametrize("make_args", [
    lambda src, bad, out: ["compress", bad, "-o", out],
    lambda src, bad, out: ["compress", src, "-o", out, "--prune", "1.2"],
])
def test_installed_command_exits_2_with_one_error_line(make_args, mlp_path, tmp_path):
    # The real process: its exit status, and nothing but the error line on stderr.
    bad, out = _text(tmp_path, None), tmp_path / "out.onnx"
    proc = subprocess.run([str(ONNXJPQ), *map(str, make_args(mlp_path, bad, out))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not out.exists()


# ---------------------------------------------------------------------- pipelines


def _mlp_data(tmp_path) -> Path:
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    return data


def test_eval_and_sensitivity_json_dash_print_only_json_on_stdout(mlp_path, tmp_path):
    data = _mlp_data(tmp_path)
    result = _invoke("eval", mlp_path, mlp_path, "--data", data, "--runs", "0", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["agreement"] == 100.0
    assert "onnxjpq eval" in result.stderr
    result = _invoke("sensitivity", mlp_path, "--data", data, "--json", "-", "-q", "--min-params", "0")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) and result.stderr == ""


def test_installed_command_exits_1_when_eval_validation_fails(mlp_path, tmp_path):
    data, cand = _mlp_data(tmp_path), tmp_path / "cand.onnx"
    model = onnx.load(str(mlp_path))
    for tensor in model.graph.initializer:  # a candidate that disagrees with the reference
        tensor.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, str(cand))
    proc = subprocess.run([str(ONNXJPQ), "eval", str(mlp_path), str(cand), "--data", str(data), "--runs", "0",
                           "--max-drop", "1", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "more than --max-drop 1" in lines[0]
