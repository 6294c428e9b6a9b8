"""`finetune --resume` continues only the run its checkpoint was written by (issue 15, item 2).

The checkpoint records every setting that shapes the run (method, plan or budget,
selection, output, epochs, learning rate, batch, optimiser, seed, digests of the
model and the data); a resume with any of them changed is refused with one line
naming the difference, before any training, and nothing is written. The
checkpoint of a successful run is removed unless --keep-checkpoint.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from onnxjpq.cli import main  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def _invoke(folder: Path, *args):
    return CliRunner().invoke(main, ["finetune", str(folder / "lenet5.onnx"), "-o", str(folder / "o.onnx"),
                                     *[str(a) for a in args]])


def _base(folder: Path) -> list[str]:
    return ["--data", str(folder / "train.npz"), "--val", str(folder / "val.npz"), "--method", "masked",
            "--prune", "0.5", "--bits", "4", "--epochs", "1", "-q"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder holding the output and the kept checkpoint of a finished one-epoch masked run."""
    folder = tmp_path_factory.mktemp("resume")
    shutil.copy(MODELS / "lenet5.onnx", folder / "lenet5.onnx")
    with np.load(MODELS / "lenet5_train.npz") as f:
        np.savez(folder / "train.npz", input=f["input"][:192], labels=f["labels"][:192])
        np.savez(folder / "other.npz", input=f["input"][192:384], labels=f["labels"][192:384])
    with np.load(MODELS / "lenet5_test.npz") as f:
        np.savez(folder / "val.npz", input=f["input"][:128], labels=f["labels"][:128])
    result = _invoke(folder, *_base(folder), "--keep-checkpoint")
    assert result.exit_code == 0, result.output
    assert (folder / "o.onnx.ckpt").is_file()
    return folder


def _swap(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(option) + 1] = value
    return out


CHANGES = {
    "prune and bits": (lambda f, a: _swap(_swap(a, "--prune", "0.9"), "--bits", "3"),
                       ["prune 0.5 in the checkpoint, 0.9 now", "bits 4.0 in the checkpoint, 3.0 now"]),
    "budget instead of plan": (lambda f, a: [x for x in a if x not in ("--prune", "0.5", "--bits", "4")]
                               + ["--rate", "8"], ["type OpqConfig in the checkpoint, AnncConfig now"]),
    "learning rate": (lambda f, a: [*a, "--lr", "0.05"], ["lr 0.01 in the checkpoint, 0.05 now"]),
    "epochs": (lambda f, a: _swap(a, "--epochs", "2"), ["epochs 1 in the checkpoint, 2 now"]),
    "batch": (lambda f, a: [*a, "--batch", "32"], ["batch 64 in the checkpoint, 32 now"]),
    "optimizer": (lambda f, a: [*a, "--optimizer", "adam"], ["optimizer sgd in the checkpoint, adam now"]),
    "data": (lambda f, a: _swap(a, "--data", str(f / "other.npz")), ["the --data file's contents changed"]),
    "selection": (lambda f, a: [*a, "--exclude", "conv1*"], ["selection.exclude"]),
    "output": (lambda f, a: [*a, "--no-int4"], ["output.int4 True in the checkpoint, False now"]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_with_a_changed_setting_is_refused_naming_it(finished, change):
    edit, phrases = CHANGES[change]
    before = {p.name: _sha(p) for p in finished.iterdir()}
    result = _invoke(finished, *edit(finished, _base(finished)), "--resume")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: --resume: ") and "other settings" in lines[0], lines
    for phrase in phrases:
        assert phrase in lines[0]
    assert {p.name: _sha(p) for p in finished.iterdir()} == before  # the output and checkpoint untouched


def test_resume_with_the_same_settings_gives_the_finished_runs_output(finished):
    first = _sha(finished / "o.onnx")
    result = _invoke(finished, *_base(finished), "--resume", "--keep-checkpoint", "--json")
    assert result.exit_code == 0, result.output
    assert _sha(finished / "o.onnx") == first  # nothing left to train: the same model
    assert (finished / "o.onnx.ckpt").is_file()


def test_a_successful_run_removes_its_checkpoint(finished, tmp_path):
    result = CliRunner().invoke(main, ["finetune", str(finished / "lenet5.onnx"), "-o", str(tmp_path / "n.onnx"),
                                       *_base(finished)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.onnx"]


def test_a_checkpoint_without_settings_is_refused(finished, tmp_path):
    import torch

    state = torch.load(finished / "o.onnx.ckpt", weights_only=True)
    del state["settings"]
    torch.save(state, tmp_path / "old.ckpt")
    result = _invoke(finished, *_base(finished), "--checkpoint", tmp_path / "old.ckpt", "--resume")
    assert result.exit_code == 2
    assert "does not record its run's settings" in result.stderr.strip()


def test_the_seed_is_a_setting_too():
    from onnxjpq.finetune.run import setting_differences

    import json

    saved = json.dumps({"train": {"seed": 0, "lr": 0.01}, "data": "ab"})
    now = json.dumps({"train": {"seed": 1, "lr": 0.01}, "data": "cd"})
    assert setting_differences(saved, now) == ["the --data file's contents changed",
                                               "seed 0 in the checkpoint, 1 now"]
