"""Real pretrained CNNs compressed data-aware (issue 11): `--rate 8 --calib` keeps the decisions
fp32 makes, where the data-free `--rate 8` and per-channel round-to-nearest int4 do not.

Calibration: 64 samples of seed 1 (`ZooCNN.data`), evaluation on the registry's seed-0
samples, so no evaluation sample is calibrated on. Figures measured with
`python tools/bench_data_aware.py` are in docs/benchmarks.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

CALIB_SAMPLES = 64


def compress(case, tmp_path, *options: str, label: str) -> tuple[dict, dict]:
    out, report = tmp_path / f"{label}.onnx", tmp_path / f"{label}.json"
    result = CliRunner().invoke(main, ["compress", str(case.path), "-o", str(out), "--report", str(report), "-q",
                                       *options])
    assert result.exit_code == 0, (result.output, result.exception)
    metric = case.entry.evaluate(case.path, out, case.data, case.reference)
    return metric, json.loads(report.read_text())["totals"]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocr_cls", "orientation"])
def test_rate_8_with_calibration_keeps_the_decisions(name, cnn_case, tmp_path):
    case = cnn_case(name)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **case.entry.data(CALIB_SAMPLES, 1))
    aware, totals = compress(case, tmp_path, "--rate", "8", "--calib", str(calib), label="aware")
    free, _ = compress(case, tmp_path, "--rate", "8", label="free")
    int4, int4_totals = compress(case, tmp_path, "--bits", "4", "--granularity", "channel", label="int4")
    headline = case.entry.headline
    assert totals["storage_rate"] >= 8 * 0.999
    assert int4_totals["storage_rate"] >= 0.9 * totals["storage_rate"]  # int4 is as small or smaller
    assert aware[headline] >= 0.99, aware
    assert aware[headline] >= free[headline] and aware["max_abs_diff"] < free["max_abs_diff"], (aware, free)
    assert aware[headline] > int4[headline] + 0.2, (aware, int4)
