"""Every code block of README runs (issue 15, item 20), as onnx-graphsurgeon's tests run its docs.

The blocks run as written, in a scratch folder where the names README uses
exist: `model.onnx` is the bundled lenet5, `train.npz`/`calib.npz` a few hundred
of its training digits, `val.npz`/`test.npz` its test set, and `models/`,
`tools/` are the project's. Only `pip install` lines are left out (CI has just
run them) and the first block (the two commands CI itself runs). Figures that
README states beside a command are checked against that command's output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every bash and python block after the first (the install commands)."""
    return BLOCK.findall(README.read_text())[1:]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    for name in ("models", "tools"):
        (work / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "models" / "lenet5.onnx", work / "model.onnx")
    with np.load(ROOT / "models" / "lenet5_train.npz") as train:
        few = {k: v[:384] for k, v in train.items()}
    for name in ("train.npz", "calib.npz"):
        np.savez(work / name, **few)
    for name in ("val.npz", "test.npz"):
        shutil.copy(ROOT / "models" / "lenet5_test.npz", work / name)
    return work


def _run(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if language == "python":
        command = [sys.executable, "-c", code]
    else:
        kept = [line for line in code.splitlines() if "pip install" not in line]
        command = ["bash", "-euo", "pipefail", "-c", "\n".join(kept)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_readme_has_the_two_commands_first_and_blocks_to_run():
    first = BLOCK.findall(README.read_text())[0][1].strip().splitlines()
    assert len(first) == 2 and "onnxjpq demo" in first[0] and "pytest" in first[1]
    assert len(readme_blocks()) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs(index, scratch):
    language, code = readme_blocks()[index]
    done = _run(language, code, scratch)
    assert done.returncode == 0, f"README block {index + 1}:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    for figure in re.findall(r"^onnxjpq eval [^#\n]*#([^\n]*)$", code, re.M):
        for stated in re.findall(r"\d+\.\d+ %", figure):  # "97.33 %" beside an eval is in its output
            assert f"{stated[:-2]} points" in done.stderr, (figure, done.stderr[-2000:])
