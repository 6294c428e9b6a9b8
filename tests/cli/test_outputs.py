"""Nothing lost, nothing misleading (issue 15): outputs that alias inputs, interrupts, leftovers, progress.

Every refusal must be one `error: ...` line with status 2, before any work:
every input byte-identical afterwards and nothing new in the folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxjpq.cli import main
from onnxjpq.testing import MLP, laplace, make_model

MODELS = Path(__file__).resolve().parents[2] / "models"


def _mlp() -> onnx.ModelProto:
    return make_model(MLP, {"W1": laplace((16, 16), 0.1, seed=1), "W2": laplace((16, 32), 0.05, seed=2),
                            "W3": laplace((32, 4), 0.2, seed=3)})


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A folder with m.onnx (weights in w.data), copies of the bundled lenet5 and its data, a text file."""
    onnx.save_model(_mlp(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.data",
                    size_threshold=0)
    for name in ("lenet5.onnx", "lenet5_test.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    shutil.copy(MODELS / "lenet5.onnx", tmp_path / "cand.onnx")
    with np.load(MODELS / "lenet5_train.npz") as f:  # a small training set: the refusals come first anyway
        np.savez(tmp_path / "train.npz", input=f["input"][:128], labels=f["labels"][:128])
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "link"
            for p in sorted(folder.iterdir())}


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(folder: Path, args, match: str) -> str:
    """The command ends in one error line matching `match`, status 2, the folder exactly as it was."""
    before = _snapshot(folder)
    result = _invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr
    assert _snapshot(folder) == before  # inputs byte-identical, nothing written
    return lines[0]


LENET = ["lenet5.onnx"]
FT = ["finetune", "lenet5.onnx", "--data", "train.npz", "--prune", "0.5", "--bits", "4", "--epochs", "1"]
EVAL = ["eval", "lenet5.onnx", "cand.onnx", "--data", "lenet5_test.npz", "--runs", "0"]

# (arguments, what the error must name): every case of issue 15, item 1
ALIASES = [
    (["compress", "m.onnx", "-o", "w.data"], "is the input's external data file"),
    (["compress", "m.onnx", "-o", "w.data", "--rate", "8"], "is the input's external data file"),
    (["compress", "m.onnx", "-o", "o.onnx", "--report", "w.data"], "report w.data is the input's external data"),
    (["compress", *LENET, "-o", "lenet5_test.npz", "--rate", "8", "--calib", "lenet5_test.npz"], "the --calib file"),
    (["compress", *LENET, "-o", "o.onnx", "--rate", "8", "--calib", "lenet5_test.npz", "--report",
      "lenet5_test.npz"], "report lenet5_test.npz is the --calib file"),
    (["compress", *LENET, "-o", "lenet5_test.npz", "--max-drop", "1", "--data", "lenet5_test.npz"],
     "is the --data file"),
    ([*EVAL, "--json", "lenet5.onnx"], "--json file lenet5.onnx is the reference model"),
    ([*EVAL, "--json", "cand.onnx"], "is the candidate model"),
    ([*EVAL, "--json", "lenet5_test.npz"], "is the --data file"),
    (["sensitivity", *LENET, "--data", "lenet5_test.npz", "--json", "lenet5_test.npz"], "is the --data file"),
    ([*FT, "-o", "o.onnx", "--checkpoint", "lenet5.onnx"], "checkpoint lenet5.onnx is the input file"),
    ([*FT, "-o", "train.npz"], "output train.npz is the --data file"),
    ([*FT, "-o", "o.onnx", "--checkpoint", "train.npz"], "checkpoint train.npz is the --data file"),
    ([*FT, "-o", "lenet5_test.npz", "--val", "lenet5_test.npz"], "is the --val file"),
    (["compress", "m.onnx", "-o", "o.onnx", "--report", "o.onnx"], "report o.onnx is also the output"),
    (["compress", "m.onnx", "-o", "o.onnx", "--report", "o.onnx.data"], "is also the output data file"),
    ([*FT, "-o", "o.onnx", "--report", "o.onnx"], "report o.onnx is also the output"),
    ([*FT, "-o", "o.onnx", "--report", "o.onnx.data"], "is also the output data file"),
    ([*FT, "-o", "o.onnx", "--checkpoint", "o.onnx"], "checkpoint o.onnx is also the output"),
    (["compress", "m.onnx", "-o", "o.onnx", "--plot", "o.onnx"], "is also the --plot folder"),
]


@pytest.mark.parametrize("args,match", ALIASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in ALIASES])
def test_an_output_naming_an_input_or_another_output_is_refused_before_any_work(work, args, match):
    assert_refused(work, args, match)


def test_an_output_reaching_an_input_through_a_symlink_is_refused(work):
    os.symlink("lenet5_test.npz", work / "link.npz")
    line = assert_refused(work, ["compress", *LENET, "-o", "link.npz", "--rate", "8", "--calib", "lenet5_test.npz"],
                          "is the --calib file")
    assert "symlink" in line


def test_an_output_reaching_an_input_through_a_hard_link_is_refused(work):
    os.link(work / "w.data", work / "hard.data")
    line = assert_refused(work, ["compress", "m.onnx", "-o", "o.onnx", "--report", "hard.data"],
                          "is the input's external data file")
    assert "hard link" in line


def test_an_output_in_a_symlinked_folder_reaching_the_input_is_refused(work):
    os.symlink(work, work / "same")
    assert_refused(work, ["compress", "m.onnx", "-o", "same/m.onnx"], "is the input file")


def test_a_trailing_slash_names_a_folder_and_is_refused(work):
    assert_refused(work, ["compress", "m.onnx", "-o", "newdir/"], "ends with '/'")


@pytest.mark.parametrize("plot", ["notes.txt/sub", "notes.txt"])
def test_a_plot_folder_under_or_at_a_file_is_refused_before_any_model_is_written(work, plot):
    pytest.importorskip("matplotlib")
    assert_refused(work, ["compress", "m.onnx", "-o", "out.onnx", "--plot", plot], "is a file")


def _broken_models(folder: Path) -> dict[str, Path]:
    model = _mlp()
    dup = onnx.ModelProto()
    dup.CopyFrom(model)
    dup.graph.initializer.append(dup.graph.initializer[0])
    both = onnx.ModelProto()
    both.CopyFrom(model)
    both.graph.initializer[0].float_data.append(1.0)  # raw_data and float_data
    shape = onnx.ModelProto()
    shape.CopyFrom(model)
    shape.graph.value_info.append(helper.make_tensor_value_info(model.graph.node[0].output[0],
                                                                TensorProto.FLOAT, [7, 3]))
    paths = {}
    for name, m in (("duplicate", dup), ("raw_and_float", both), ("wrong_value_info", shape)):
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(m.SerializeToString())
    return paths


@pytest.mark.parametrize("case,match", [("duplicate", "initializer name is not unique"),
                                        ("raw_and_float", "one and only one value field"),
                                        ("wrong_value_info", "Inferred shape and existing shape differ")])
def test_models_onnx_checker_rejects_are_refused_up_front(work, case, match):
    src = _broken_models(work)[case]
    line = assert_refused(work, ["compress", src.name, "-o", "out.onnx"], match)
    assert "onnx.checker rejects it" in line


def test_a_compressed_model_failing_the_full_check_is_one_line_and_not_written():
    from onnxjpq.errors import ModelError
    from onnxjpq.pipeline.compress import check_output

    model = _mlp()
    model.graph.value_info.append(helper.make_tensor_value_info("h1", TensorProto.FLOAT, [5, 5]))
    with pytest.raises(ModelError, match="fails onnx.checker .*nothing was written"):
        check_output(model, runtime=False)


# ------------------------------------------------------------------ fine-tuning leftovers


def test_fine_tuning_with_an_infinite_learning_rate_is_refused_and_leaves_no_checkpoint(work):
    assert_refused(work, [*FT, "-o", "out.onnx", "--lr", "inf"], "lr a finite number")


def test_a_fine_tuning_run_failing_after_its_checkpoints_leaves_none(work, monkeypatch):
    import onnxjpq.finetune.run as run

    def disk_full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "apply_plan", disk_full)  # fails after the epochs wrote their checkpoints
    before = _snapshot(work)
    result = _invoke(*FT, "-o", "out.onnx", "-q")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: cannot write the output: No space left on device"]
    assert _snapshot(work) == before


# ------------------------------------------------------------------ -q and progress


def test_warnings_are_not_printed_under_quiet(work):
    model = onnx.load(str(work / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:  # onnx warns about unknown external data keys
        entry = tensor.external_data.add()
        entry.key, entry.value = "unknown_key", "1"
    onnx.save_model(model, str(work / "m.onnx"))

    def cli(*extra):  # a subprocess: pytest would catch the warnings of an in-process run
        return subprocess.run([sys.executable, "-m", "onnxjpq", "compress", "m.onnx", "-o", "out.onnx", *extra],
                              cwd=work, capture_output=True, text=True, timeout=300)
    loud = cli()
    assert loud.returncode == 0 and "unknown external data key" in loud.stderr, loud.stderr
    quiet = cli("-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.fixture
def at_once(monkeypatch):
    """Plain progress lines from the first item (they start after PROGRESS_AFTER_S of work)."""
    import onnxjpq.cli.common as common

    monkeypatch.setattr(common, "PROGRESS_AFTER_S", 0.0)


def test_progress_lines_reach_a_stderr_that_is_not_a_terminal(work, at_once):
    compressed = _invoke("compress", "m.onnx", "-o", "out.onnx")
    assert compressed.exit_code == 0, compressed.output
    assert "compressing layers: 3/3" in compressed.stderr.splitlines()
    assert _invoke("compress", "m.onnx", "-o", "out.onnx", "-q").stderr == ""
    evaluated = _invoke(*EVAL, "--batch", "100")
    assert evaluated.exit_code == 0, evaluated.output
    assert "evaluating batches: 5/5" in evaluated.stderr.splitlines()
    assert _invoke(*EVAL, "--batch", "100", "-q").stderr == ""


def test_quick_work_prints_no_progress_lines(work):
    result = _invoke("compress", "m.onnx", "-o", "out.onnx")
    assert result.exit_code == 0 and "compressing layers" not in result.stderr


def test_the_accuracy_search_prints_a_line_per_evaluated_rate(work, at_once):
    result = _invoke("compress", *LENET, "-o", "out.onnx", "--max-drop", "1", "--data", "lenet5_test.npz")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("search: rate ")]
    assert len(lines) >= 2 and all(line.endswith(("within the limit", "over the limit")) for line in lines)


def test_fine_tuning_says_its_accuracy_is_on_the_training_data_without_val(work):
    result = _invoke(*FT, "-o", "out.onnx")
    assert result.exit_code == 0, result.output
    assert "accuracy is measured on the training data" in result.stderr
    assert any(line.startswith("accuracy on the training data: fp32") for line in result.stderr.splitlines())
    assert any(" epoch 1 " in line and "(training data)" in line for line in result.stderr.splitlines())
    assert not (work / "out.onnx.ckpt").exists()  # removed after a successful run


# ------------------------------------------------------------------ interrupts


def _interrupted(folder: Path, target: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess in which `target` (module:function) sends SIGINT to the process
    (a real Ctrl-C: Python's handler raises KeyboardInterrupt) after doing its work."""
    module, name = target.split(":")
    code = textwrap.dedent(f"""
        import importlib, os, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even when started in the background
        module = importlib.import_module({module!r})
        real = getattr(module, {name!r})
        def interrupted(*args, **kwargs):
            result = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            return result
        setattr(module, {name!r}, interrupted)
        from onnxjpq.cli import main
        main({args!r})
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("target,args", [
    ("onnxjpq.pipeline.compress:check_output", ["compress", *LENET, "-o", "out.onnx", "--report", "r.json", "-q"]),
    ("onnxjpq.workflows.evaluate:compare", [*EVAL, "--json", "r.json", "-q"]),
])
def test_ctrl_c_is_one_line_status_130_and_leaves_nothing(work, target, args):
    before = _snapshot(work)
    result = _interrupted(work, target, args)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["error: interrupted"]
    assert _snapshot(work) == before


def test_ctrl_c_while_a_temporary_file_is_open_removes_it(work):
    code = textwrap.dedent("""
        import contextlib, os, signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even when started in the background
        import onnxjpq.graph.outputs as io
        real = io.atomic_file
        @contextlib.contextmanager
        def slow(path):
            with real(path) as f:
                yield f
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C with the temporary file written, not yet moved
                time.sleep(5)
        io.atomic_file = slow
        from onnxjpq.cli import main
        main(["compress", "lenet5.onnx", "-o", "out.onnx", "-q"])
    """)
    before = _snapshot(work)
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130 and result.stderr.strip() == "error: interrupted", result.stderr
    assert _snapshot(work) == before


def test_ctrl_c_during_fine_tuning_keeps_the_checkpoint_for_resume(work):
    result = _interrupted(work, "onnxjpq.finetune.train:_save_checkpoint", [*FT, "-o", "out.onnx", "--epochs", "3"])
    assert result.returncode == 130, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: interrupted (out.onnx.ckpt holds the last finished epoch") and \
        "--resume" in lines[-1]
    assert (work / "out.onnx.ckpt").is_file() and not (work / "out.onnx").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".onnxjpq-")]


def test_the_next_run_removes_the_temporaries_of_a_killed_one(work):
    code = textwrap.dedent("""
        import os, signal
        from onnxjpq.graph.io import atomic_file
        with atomic_file("out.onnx") as f:
            f.write(b"half a model")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    stale = [p for p in work.iterdir() if p.name.startswith(".onnxjpq-")]
    assert len(stale) == 1
    from onnxjpq.graph.outputs import temp_prefix
    mine = work / f"{temp_prefix()}live.tmp"  # a running process's temporary (this one's) stays
    mine.write_bytes(b"")
    result = _invoke("compress", "m.onnx", "-o", "out.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert not stale[0].exists() and mine.exists()


def test_a_sweep_failing_midway_leaves_nothing_behind(work, monkeypatch):
    import onnxjpq.workflows.sweep as sweep
    from onnxjpq.errors import ModelError

    real, calls = sweep.run_point, []

    def second_fails(task):
        calls.append(task)
        if len(calls) == 2:
            raise ModelError("the second point failed")
        return real(task)

    monkeypatch.setattr(sweep, "run_point", second_fails)
    before = _snapshot(work)
    result = _invoke("sweep", *LENET, "--data", "lenet5_test.npz", "--prune", "0,0.5", "--bits", "8",
                     "--jobs", "1", "--no-plot", "--out", "grid", "-q")
    assert result.exit_code == 2 and result.stderr.strip() == "error: the second point failed"
    assert len(calls) == 2 and _snapshot(work) == before  # the first point's model and report are gone


def test_a_sweep_whose_out_folder_would_hold_an_input_is_refused(work):
    (work / "grid" / "models").mkdir(parents=True)
    os.symlink("../../lenet5_test.npz", work / "grid" / "models" / "lenet5_p0_b8.json")
    assert_refused(work, ["sweep", *LENET, "--data", "lenet5_test.npz", "--prune", "0", "--bits", "8",
                          "--no-plot", "--out", "grid"], "point report")
