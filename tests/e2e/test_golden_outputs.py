"""Byte-identical outputs across refactors: the SHA-256 of the bundled models' compressed
files at the demo settings, the budget modes and the streaming path, recorded from the
commit before the layered layout (3a37da3); the OPQ cases again where the Laplace statistics
were made independent of the CPU (float64 mean|w|, libm expm1 and an exact sum in the
threshold: numpy's SIMD kernels differ by CPU in the last ulp; checked on an AVX-512 CPU with
and without NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL").

The data-aware (`--calib`) cases solve least squares with BLAS, whose result depends on the
kernel OpenBLAS picks for the CPU (AVX2 and AVX-512 kernels sum in different orders). They run
in a child process with OPENBLAS_CORETYPE=Haswell, which pins the kernel on any x86-64 CPU, so
the recorded hashes hold on every such machine; docs/architecture.md says so for users.

Re-recorded where an opset upgrade (int4, packed) had added shape annotations (value_info)
the input lacked: the outputs are otherwise the same, checked by comparing the protos with
their value_info removed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"
PINNED_BLAS = {"OPENBLAS_CORETYPE": "Haswell"}

CASES = {
    "lenet5 --prune 0.5 --bits 4": ("lenet5", ["--prune", "0.5", "--bits", "4"]),
    "lenet5 --prune 0.8 --bits 4": ("lenet5", ["--prune", "0.8", "--bits", "4"]),
    "lenet5 --prune 0.9 --bits 3": ("lenet5", ["--prune", "0.9", "--bits", "3"]),
    "lenet5 --rate 16": ("lenet5", ["--rate", "16"]),
    "lenet5 --rate 24": ("lenet5", ["--rate", "24"]),
    "lenet5 --rate 16 --calib": ("lenet5", ["--rate", "16", "--calib", str(MODELS / "lenet5_test.npz")]),
    "lenet5 --prune 0.5 --bits 4 --format sparse": ("lenet5", ["--prune", "0.5", "--bits", "4", "--format", "sparse"]),
    "lenet300 --prune 0.8 --bits 4": ("lenet300", ["--prune", "0.8", "--bits", "4"]),
    "lenet300 --rate 16": ("lenet300", ["--rate", "16"]),
    "lenet300 --rate 16 --calib": ("lenet300", ["--rate", "16", "--calib", str(MODELS / "lenet300_test.npz")]),
    "lenet300 --prune 0.9 --bits 3 --format sparse": ("lenet300", ["--prune", "0.9", "--bits", "3", "--format", "sparse"]),
    "lenet300 external --prune 0.5 --bits 4 (streaming)": ("lenet300-external", ["--prune", "0.5", "--bits", "4"]),
    "lenet300 external --prune 0.8 --bits 4 --format float (streaming)": (
        "lenet300-external", ["--prune", "0.8", "--bits", "4", "--format", "float"]),
}

GOLDEN = {
    'lenet300 --prune 0.8 --bits 4': '615f1d53a5b885ab953b213db6c65c7130642ceb89ad06a45fc8a6f905f76f9b',
    'lenet300 --prune 0.9 --bits 3 --format sparse': '905ecae47848b2b4b6478aa28d3de65fbc7fd641eb3c27a36fc684e6ffcdd992',
    'lenet300 --rate 16': '9308585092250eeede54eee780f7c1084ed5db37c5520869d713fac787795c31',
    'lenet300 --rate 16 --calib': 'c16b736efd8d8bc0bb04733a72996fd5fceb2865aa33c10a0666099ec9601689',  # data-aware, GPTQ damping floor (86dc488)
    'lenet300 external --prune 0.5 --bits 4 (streaming)': '282a145625a66524fd47c44ffb304f560eb9b8c96bb1c906f6bc3bceaa01517f',
    # float holds the values qdq dequantizes to, int4 fitting included (issue 15, item 18)
    'lenet300 external --prune 0.8 --bits 4 --format float (streaming)': '126418bcfc2bedc79f6ccba5a6af0012205130941d2075b2a301e5bdb7269b9b',
    'lenet5 --prune 0.5 --bits 4': 'ad1d0fa2d8ccbd3121ded2bfbe9f5b316f82c84a86de89507fe12cb611f2e09d',
    # every format is solved alike, int4 fitting included unless --no-int4 (issue 15, item 18)
    'lenet5 --prune 0.5 --bits 4 --format sparse': 'f9ee7e5b5f9e545ab14d04bf882148a47dcb8cc78577386b179a794c9a6e9dc7',
    'lenet5 --prune 0.8 --bits 4': 'f25d74eafc3e642702b5e40d06d3b7f32418f6b0129528d8bc895ac6192e69d0',
    'lenet5 --prune 0.9 --bits 3': '0de27118e471c2e3096831cea1156e126c9bac4d6372d3eca07344cdc7567dd6',
    'lenet5 --rate 16': '5adf296e4ab313a0e4903a4e6c0b378a747039b9a8188215bfbb499a04318686',
    'lenet5 --rate 16 --calib': '4644a99a93fd2684045da9cf3b28ab6005f789442199f78ebe54fd4a00667617',  # data-aware, GPTQ damping floor (86dc488)
    'lenet5 --rate 24': '6032b8157b4e652cc42ce554e780d4a0bcd6f4f3a561bbc675d403de94c42f37',
}


def _source(name: str, folder: Path) -> Path:
    if not name.endswith("-external"):
        return MODELS / f"{name}.onnx"
    model = onnx.load(MODELS / f"{name.removesuffix('-external')}.onnx")
    path = folder / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.onnx.data", size_threshold=0)
    return path


def digest(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    data = path.with_name(path.name + ".data")
    if data.exists():
        h.update(data.read_bytes())
    return h.hexdigest()


def run_case(case: str, folder: Path) -> str:
    name, args = CASES[case]
    src = _source(name, folder)
    out = folder / "out.onnx"
    argv = ["compress", str(src), "-o", str(out), "-q", *args]
    if "--calib" in args:
        # BLAS picks its kernel when numpy loads: only a fresh process can be pinned.
        result = subprocess.run([sys.executable, "-m", "onnxjpq", *argv], capture_output=True,
                                text=True, env={**os.environ, **PINNED_BLAS})
        assert result.returncode == 0, result.stderr
    else:
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.output
    return digest(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_output_bytes_are_those_of_the_commit_before_the_layout(case, tmp_path):
    assert run_case(case, tmp_path) == GOLDEN[case]
