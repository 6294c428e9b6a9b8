"""README's code blocks run (as onnx-graphsurgeon's tests run their docs): every bash
line and Python block, in a folder where `model.onnx` is the bundled lenet5 and the
data files are its splits. Lines that install packages, start other tools or stand
for a user's own command are listed in `NOT_RUN` with the reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

NOT_RUN = {
    "python -m pip install": "installs packages (CI runs the install commands themselves)",
    "torchrun": "a placeholder for the user's own options ('...')",
    "python tools/bench_large.py   ": "the 2.2 GB benchmark (tests/graph/test_large.py runs it small)",
    "python tools/bench_large.py                 #": "the 2.2 GB benchmark (tests/graph/test_large.py runs it small)",
}


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(), re.S | re.M)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash")[1:]:  # the first block is the install-and-run pair CI runs itself
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not any(command.startswith(prefix) for prefix in NOT_RUN):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(ROOT / "models" / "lenet5.onnx", folder / "model.onnx")
    for name in ("val", "test", "calib"):
        shutil.copy(ROOT / "models" / "lenet5_test.npz", folder / f"{name}.npz")
    shutil.copy(ROOT / "models" / "lenet5_train.npz", folder / "train.npz")
    (folder / "tools").symlink_to(ROOT / "tools")
    return folder


def test_the_readme_has_code_to_run():
    assert len(_commands()) >= 15 and len(_blocks("python")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("command", _commands())
def test_readme_command_runs(command, folder):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs(index, folder, monkeypatch):
    monkeypatch.chdir(folder)
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})
