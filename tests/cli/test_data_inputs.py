"""Data files and data entry points that are damaged, forged, misnamed or hostile (issue 15).

Every verb that reads data (compress --calib / --activations int8 / --max-drop
--data, eval --data, sensitivity, sweep, finetune --data / --val) meets the
same cases: an .npz whose headers declare absurd sizes, a file that is not an
.npz at all, a FIFO or a device, NaN or Inf samples, labels under another
name, `module:function` entry points that raise, return None, yield ragged
arrays, fail midway, do not parse or call sys.exit. Each ends in one
`error: ...` line naming the input and exit status 2 (or in the documented
result), leaves the input bytes unchanged and writes nothing.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxjpq.cli import main
from onnxjpq.runtime.sessions import bounded_threads, cpu_cores

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5, LENET300, TEST = MODELS / "lenet5.onnx", MODELS / "lenet300.onnx", MODELS / "lenet5_test.npz"


def _invoke(*args) -> "click.testing.Result":
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error(result, *matches: str, code: int = 2) -> str:
    """The run ended in exactly one `error: ...` line (with `matches` in it) and `code`."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for match in matches:
        assert match in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def _commands(data: Path, out: Path) -> dict[str, list]:
    """Every way a data file reaches the CLI, each writing (if anything) under `out`'s folder."""
    return {
        "eval --data": ["eval", LENET5, LENET5, "--data", data, "--runs", 0, "-q", "--json", out.with_suffix(".json")],
        "compress --calib": ["compress", LENET5, "-o", out, "--rate", 8, "--calib", data, "-q"],
        "compress --activations": ["compress", LENET5, "-o", out, "--rate", 8, "--calib", data,
                                   "--activations", "int8", "-q"],
        "compress --max-drop --data": ["compress", LENET5, "-o", out, "--max-drop", 1, "--data", data, "-q"],
        "sensitivity --data": ["sensitivity", LENET5, "--data", data, "-q", "--json", out.with_suffix(".json")],
        "sweep --data": ["sweep", LENET5, "--data", data, "--prune", "0", "--bits", "8", "--jobs", 1,
                         "--out", out.parent / "sweep", "--no-plot", "-q"],
        "finetune --data": ["finetune", LENET5, "-o", out, "--data", data, "--epochs", 1, "--prune", 0.5,
                            "--bits", 4, "-q"],
        "finetune --val": ["finetune", LENET5, "-o", out, "--data", MODELS / "lenet5_train.npz", "--val", data,
                           "--epochs", 1, "--prune", 0.5, "--bits", 4, "-q"],
    }


COMMANDS = list(_commands(Path("d"), Path("o")))


def _assert_refused_everywhere(tmp_path: Path, data: Path, *matches: str, commands=COMMANDS) -> None:
    before = data.read_bytes() if data.is_file() else None
    for name in commands:
        work = tmp_path / name.replace(" ", "_").replace("-", "")
        work.mkdir()
        _one_error(_invoke(*_commands(data, work / "out.onnx")[name]), *matches)
        assert list(work.iterdir()) == [], f"{name} left {list(work.iterdir())}"
        if before is not None:
            assert data.read_bytes() == before, f"{name} modified the data file"


def _lenet_data(**changes) -> dict[str, np.ndarray]:
    arrays = dict(np.load(TEST))
    arrays.update(changes)
    return arrays


# ---------------------------------------------------------------- 7: headers declaring absurd sizes


def _npy(shape, dtype="<f4", payload: bytes = b"\0" * 64) -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def _zip(members: dict[str, bytes], compress=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as archive:
        for name, blob in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob, compress)
    return buffer.getvalue()


def _forged_size(blob: bytes, size: int) -> bytes:
    """The archive with its one member's uncompressed size (local header and directory) set to `size`."""
    out = bytearray(blob)
    struct.pack_into("<I", out, 22, size)  # local file header
    central = out.index(b"PK\x01\x02")
    struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


HEADER_BOMB = _zip({"input.npy": _npy((10**13, 1, 8, 8)), "labels.npy": _npy((10**13,), "<i8")})


def test_a_header_declaring_2000_tib_is_refused_before_allocating_in_every_mode(tmp_path):
    data = tmp_path / "bomb.npz"
    data.write_bytes(HEADER_BOMB)
    _assert_refused_everywhere(tmp_path, data, "bomb.npz", "'input' declares shape [10000000000000, 1, 8, 8]",
                               "TiB")


def test_a_forged_uncompressed_size_is_bounded_by_what_deflate_can_expand(tmp_path):
    shape = (4 * 10**6, 1, 8, 8)  # 1 GiB declared, and the zip directory agrees
    blob = _zip({"input.npy": _npy(shape)}, zipfile.ZIP_DEFLATED)
    data = tmp_path / "forged.npz"
    data.write_bytes(_forged_size(blob, 4 * int(np.prod(shape)) + 128))
    _one_error(_invoke("eval", LENET5, LENET5, "--data", data, "--runs", 0), "forged.npz", "declares shape",
               "the archive holds")


def test_an_array_larger_than_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    import onnxjpq.runtime.npz as npz

    monkeypatch.setattr(npz, "_memory_bytes", lambda: 10_000)  # lenet5_test's 115 KB input is then too big
    _one_error(_invoke("eval", LENET5, LENET5, "--data", TEST, "--runs", 0), "'input' needs",
               "more than this machine's memory")


def test_a_negative_or_truncated_array_is_one_line(tmp_path):
    cases = {"negative.npz": _zip({"input.npy": _npy((-4, 1, 8, 8))}),
             "truncated.npz": _zip({"input.npy": _npy((450, 1, 8, 8), payload=b"\0" * 100)})}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        _one_error(_invoke("eval", LENET5, LENET5, "--data", tmp_path / name, "--runs", 0), name)


# ---------------------------------------------------------------- 8: entry points that misbehave


ENTRY_POINTS = {
    "raises": ("def f():\n    raise RuntimeError('the dataset server is down')\n",
               "calling it failed: RuntimeError: the dataset server is down"),
    "returns_none": ("def f():\n    return None\n", "the function returned None"),
    "returns_a_number": ("def f():\n    return 3\n", "the function returned int"),
    "ragged": ("def f():\n    return [{'input': [np.zeros((1, 8, 8)).tolist(), np.zeros((1, 8, 7)).tolist()]}]\n",
               "item 0: input 'input' is not a numeric array"),
    "object_array": ("def f():\n    return [{'input': np.array([np.zeros(3), np.zeros(2)], dtype=object)}]\n",
                     "item 0: input 'input' is not a numeric array"),
    "fails_midway": ("def f():\n    yield {'input': np.zeros((4, 1, 8, 8), np.float32)}\n"
                     "    raise OSError('connection reset')\n",
                     "reading item 1 failed: OSError: connection reset"),
    "syntax_error": ("def f(:\n    pass\n", "failed: SyntaxError"),
    "exits_0": ("import sys\n\ndef f():\n    sys.exit(0)\n", "calling it failed: it called sys.exit(0)"),
    "exits_on_import": ("import sys\nsys.exit(0)\n\ndef f():\n    pass\n", "it called sys.exit(0)"),
    "import_error_inside": ("import no_such_package_15\n\ndef f():\n    pass\n",
                            "failed: ModuleNotFoundError: No module named 'no_such_package_15'"),
}


def _entry_point(tmp_path: Path, monkeypatch, case: str) -> str:
    module = f"feed_issue15_{case}"
    (tmp_path / f"{module}.py").write_text("import numpy as np\n\n" + ENTRY_POINTS[case][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:f"


@pytest.mark.parametrize("case", sorted(ENTRY_POINTS))
def test_a_misbehaving_entry_point_is_one_line_naming_it_and_writes_no_json(case, tmp_path, monkeypatch):
    spec, out = _entry_point(tmp_path, monkeypatch, case), tmp_path / "r.json"
    line = _one_error(_invoke("eval", LENET5, LENET5, "--data", spec, "--runs", 0, "--json", out, "-q"),
                      ENTRY_POINTS[case][1])
    assert line.startswith(f"error: --data {spec}")
    assert not out.exists()


def test_debug_adds_the_entry_points_traceback(tmp_path, monkeypatch):
    spec = _entry_point(tmp_path, monkeypatch, "fails_midway")
    result = _invoke("eval", LENET5, LENET5, "--data", spec, "--runs", 0, "--debug", "-q")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "connection reset" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --data {spec}")


def test_an_entry_point_that_exits_0_in_a_subprocess_exits_2_without_the_json(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\n\ndef f():\n    sys.exit(0)\n")
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "onnxjpq", "eval", str(LENET5), str(LENET5), "--data", "quits:f",
                           "--runs", "0", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().splitlines()[-1] == "error: --data quits:f: calling it failed: it called sys.exit(0)"


# ---------------------------------------------------------------- 9: NaN and Inf in the data


@pytest.mark.parametrize("value, what", [(np.inf, "Inf"), (np.nan, "NaN"), (-np.inf, "Inf")])
def test_one_non_finite_sample_is_refused_naming_the_input_and_sample_in_every_mode(value, what, tmp_path):
    x = np.load(TEST)["input"].copy()
    x[7, 0, 3, 3] = value
    data = tmp_path / "calib.npz"
    np.savez(data, **_lenet_data(input=x))
    _assert_refused_everywhere(tmp_path, data, "calib.npz", f"input 'input' has {what} in sample 7",
                               "1 of 450 samples")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_all_non_finite_data_is_refused_not_an_assertion(value, tmp_path):
    data = tmp_path / "all.npz"
    np.savez(data, **_lenet_data(input=np.full((450, 1, 8, 8), value, np.float32)))
    _assert_refused_everywhere(tmp_path, data, "in sample 0", "450 of 450 samples",
                               commands=["compress --activations", "compress --calib", "eval --data"])


def test_an_entry_point_yielding_inf_is_refused_naming_item_and_sample(tmp_path, monkeypatch):
    (tmp_path / "feed_issue15_inf.py").write_text(textwrap.dedent("""
        import numpy as np

        def f():
            yield {"input": np.zeros((4, 1, 8, 8), np.float32)}
            x = np.zeros((4, 1, 8, 8), np.float32)
            x[2, 0, 1, 1] = np.inf
            yield {"input": x}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    _one_error(_invoke("eval", LENET5, LENET5, "--data", "feed_issue15_inf:f", "--runs", 0, "-q"),
               "item 1: input 'input' has Inf in sample 2")


def _overflowing_model(path: Path) -> Path:
    """Finite inputs, infinite outputs: y = (x W) * 1e30 * 1e30."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "W")
    big = onnx.numpy_helper.from_array(np.array(1e30, np.float32), "big")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["h", "big"], ["g"]),
                               helper.make_node("Mul", ["g", "big"], ["y"])], "overflow", [x], [y], [weight, big])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_activation_quantization_never_writes_a_model_whose_measured_snr_is_nan(tmp_path):
    src, data, out = _overflowing_model(tmp_path / "m.onnx"), tmp_path / "calib.npz", tmp_path / "out.onnx"
    np.savez(data, x=np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32))
    result = _invoke("compress", src, "-o", out, "--rate", 4, "--calib", data, "--activations", "int8",
                     "--min-params", 0, "-q")
    _one_error(result, "output SNR on the calibration data is NaN")
    assert not out.exists()


# ---------------------------------------------------------------- 10: models with different inputs


def test_eval_of_models_with_different_inputs_is_one_line_before_reading_data(tmp_path):
    line = _one_error(_invoke("eval", LENET5, LENET300, "--data", TEST, "--runs", 0),
                      "the models take different inputs")
    assert "input [N, 1, 8, 8]" in line and "input [N, 64]" in line


def test_eval_of_models_with_different_input_types_is_refused(tmp_path):
    def model(elem: int, path: Path) -> Path:
        x = helper.make_tensor_value_info("input", elem, ["N", 1, 8, 8])
        y = helper.make_tensor_value_info("logits", elem, ["N", 1, 8, 8])
        graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    doubles = model(TensorProto.DOUBLE, tmp_path / "d.onnx")
    _one_error(_invoke("eval", model(TensorProto.FLOAT, tmp_path / "f.onnx"), doubles, "--data", TEST, "--runs", 0),
               "different inputs", "tensor(double)")


# ---------------------------------------------------------------- 13: FIFOs, devices, folders, threads


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The installed CLI in a subprocess: a hang shows as a timeout, not a stuck test run."""
    return subprocess.run([sys.executable, "-m", "onnxjpq", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("command", ["eval --data", "compress --calib", "compress --max-drop --data",
                                     "finetune --val"])
def test_a_fifo_as_data_is_refused_at_once(command, tmp_path):
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    work = tmp_path / "work"
    work.mkdir()
    done = _cli(*_commands(fifo, work / "out.onnx")[command], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {fifo}: a FIFO (named pipe), not a regular file; "
                                                "give an .npz file"]
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a character device"), (".", "a folder")])
def test_a_device_or_folder_as_data_is_refused(path, kind, tmp_path):
    _one_error(_invoke("eval", LENET5, LENET5, "--data", path, "--runs", 0), kind, "not a regular file")


def test_eval_threads_beyond_the_cores_are_capped_with_a_warning(tmp_path):
    out = tmp_path / "r.json"
    done = _cli("eval", LENET5, LENET5, "--data", TEST, "--threads", 1024, "--runs", 3, "--warmup", 1,
                "--json", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"--threads 1024 is more than the {cpu_cores()} cores here; using {cpu_cores()}" in done.stderr
    assert json.loads(out.read_text())["threads"] == cpu_cores()


def test_sweep_jobs_beyond_the_cores_are_capped_with_a_warning(tmp_path):
    done = _cli("sweep", LENET5, "--data", TEST, "--prune", 0, "--bits", 8, "--jobs", 1024, "--out", tmp_path / "s",
                "--no-plot", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"--jobs 1024 is more than the {cpu_cores()} cores here; using {cpu_cores()}" in done.stderr
    assert (tmp_path / "s" / "sweep.json").is_file()


@pytest.mark.parametrize("args, match", [
    (["compress", MODELS, "-o", "out.onnx"], "Invalid value for 'SRC': File '"),
    (["compress", LENET5, "-o", MODELS], "Invalid value for '-o' / '--output'"),
    (["compress", LENET5, "-o", "out.onnx", "--calib", MODELS, "--rate", 8], "Invalid value for '--calib'"),
    (["eval", LENET5, LENET5, "--data", TEST, "--json", MODELS], "Invalid value for '--json'"),
    (["compress", LENET5, "-o", "out.onnx", "--bits", "four"], "'four' is not a valid float"),
    (["compress", LENET5, "-o", "out.onnx", "--frobnicate"], "No such option '--frobnicate'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line(args, match, tmp_path):
    result = _invoke(*args)
    line = _one_error(result, match)
    assert line.endswith("--help')")
    assert not Path("out.onnx").exists()


def test_session_threads_are_bounded_by_the_cores():
    assert bounded_threads(1024) == cpu_cores() and bounded_threads(0) == 0 and bounded_threads(1) == 1


# ---------------------------------------------------------------- 14: files that are not .npz archives


def _not_npz_files() -> dict[str, tuple[bytes, str]]:
    model = LENET5.read_bytes()
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    return {"text": (b"input,labels\n0.1,3\n", "not an .npz archive: a text file"),
            "random": (np.random.default_rng(15).bytes(300), "not an .npz archive: unrecognised bytes"),
            "onnx": (model, "not an .npz archive: an ONNX model"),
            "empty": (b"", "not an .npz archive: an empty file"),
            "npy": (npy.getvalue(), "not an .npz archive: a single .npy array"),
            "pickle": (pickle.dumps({"input": [1.0]}), "not an .npz archive: a Python pickle"),
            "gzip": (b"\x1f\x8b\x08\x00" + b"\0" * 20, "not an .npz archive: a gzip file")}


@pytest.mark.parametrize("kind", sorted(_not_npz_files()))
def test_a_file_that_is_not_an_npz_is_reported_as_what_it_is_not(kind, tmp_path):
    blob, message = _not_npz_files()[kind]
    data = tmp_path / "data.npz"
    data.write_bytes(blob)
    line = _one_error(_invoke("eval", LENET5, LENET5, "--data", data, "--runs", 0), "data.npz", message)
    assert kind == "pickle" or "pickled" not in line
    assert data.read_bytes() == blob


def test_an_npz_holding_an_object_array_still_says_pickled(tmp_path):
    data = tmp_path / "objects.npz"
    np.savez(data, input=np.array([None, 1], dtype=object))
    _one_error(_invoke("eval", LENET5, LENET5, "--data", data, "--runs", 0), "holds pickled Python objects")


# ---------------------------------------------------------------- 15: labels under another name


@pytest.mark.parametrize("key", ["label", "y", "targets", "target", "labels_true"])
def test_labels_under_a_common_name_are_used_and_named(key, tmp_path):
    data, out = tmp_path / "renamed.npz", tmp_path / "r.json"
    arrays = dict(np.load(TEST))
    np.savez(data, input=arrays["input"], **{key: arrays["labels"]})
    result = _invoke("eval", LENET5, LENET5, "--data", data, "--runs", 0, "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    expected = 100 * float((np.argmax(_logits(arrays["input"]), 1) == arrays["labels"]).mean())
    assert got["labels"] == key and got["fidelity"]["metric"] == "accuracy"
    assert got["metrics"]["accuracy"] == pytest.approx(expected)
    assert f"labels: the array {key!r}" in result.stderr


def _logits(x: np.ndarray) -> np.ndarray:
    from onnxjpq.runtime.sessions import session
    return session(LENET5).run(None, {"input": x})[0]


def test_several_candidate_label_arrays_are_refused_naming_them(tmp_path):
    data = tmp_path / "two.npz"
    arrays = dict(np.load(TEST))
    np.savez(data, input=arrays["input"], y=arrays["labels"], target=arrays["labels"])
    _assert_refused_everywhere(tmp_path, data, "several arrays could be the labels (y, target)", "--labels NAME",
                               commands=["eval --data", "compress --max-drop --data", "sensitivity --data"])


def test_a_labels_option_naming_no_array_is_refused(tmp_path):
    _one_error(_invoke("eval", LENET5, LENET5, "--data", TEST, "--labels", "classes", "--runs", 0),
               "no labels array 'classes' (--labels)", "it has labels")


def test_labels_none_measures_agreement_and_says_so(tmp_path):
    out = tmp_path / "r.json"
    result = _invoke("eval", LENET5, LENET5, "--data", TEST, "--labels", "none", "--runs", 0, "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["labels"] is None and got["fidelity"]["metric"] == "agreement"
    assert "no labels" in got["fidelity"]["reason"]


def test_float_targets_found_by_name_are_refused_with_the_way_out(tmp_path):
    data = tmp_path / "regression.npz"
    np.savez(data, input=np.load(TEST)["input"], y=np.linspace(0, 1, 450))
    _one_error(_invoke("eval", LENET5, LENET5, "--data", data, "--runs", 0),
               "labels 'y' (taken as the labels", "--labels none")


@pytest.mark.slow
def test_max_drop_with_labels_under_y_searches_by_accuracy_and_says_which_array(tmp_path):
    data, out, report = tmp_path / "y.npz", tmp_path / "out.onnx", tmp_path / "r.json"
    arrays = dict(np.load(TEST))
    np.savez(data, input=arrays["input"], y=arrays["labels"])
    result = _invoke("compress", LENET5, "-o", out, "--max-drop", 1, "--data", data, "--report", report)
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    assert search["metric"] == "accuracy" and search["labels"] == "y"
    assert "searched" in result.stderr and "by accuracy" in result.stderr and "labels 'y'" in result.stderr


def test_an_entry_point_with_labels_under_y_gives_accuracy(tmp_path, monkeypatch):
    (tmp_path / "feed_issue15_y.py").write_text(textwrap.dedent(f"""
        import numpy as np

        def f():
            data = np.load({str(TEST)!r})
            return [{{"input": data["input"], "y": data["labels"]}}]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    result = _invoke("eval", LENET5, LENET5, "--data", "feed_issue15_y:f", "--runs", 0, "--json", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["labels"] == "y" and got["metrics"]["accuracy"] is not None


# ---------------------------------------------------------------- 18: eval --json into a missing folder


def test_eval_json_into_a_missing_folder_fails_before_reading_any_data(tmp_path, monkeypatch):
    marker = tmp_path / "read"
    (tmp_path / "feed_issue15_marker.py").write_text(textwrap.dedent(f"""
        import pathlib

        import numpy as np

        def f():
            pathlib.Path({str(marker)!r}).touch()
            return {{"input": np.load({str(TEST)!r})["input"]}}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    _one_error(_invoke("eval", LENET5, LENET5, "--data", "feed_issue15_marker:f", "--json",
                       tmp_path / "missing" / "r.json"), "output folder", "does not exist")
    assert not marker.exists() and not (tmp_path / "missing").exists()
