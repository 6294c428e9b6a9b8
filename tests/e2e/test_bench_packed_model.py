"""tools/bench_packed.py --model: a real model through the CLI in each format, measured against fp32 in one run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench_packed():
    spec = importlib.util.spec_from_file_location("bench_packed", ROOT / "tools" / "bench_packed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_model_mode_prints_a_row_per_format_with_positive_ratios(capsys):
    bench = _bench_packed()
    assert bench.main(["--model", str(ROOT / "models" / "lenet5.onnx"), "--compress", "--prune 0.5 --bits 4",
                       "--creates", "1", "--runs", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")] for line in lines[head + 2:])}
    assert list(rows) == ["fp32", *bench.FORMATS]
    for name, cells in rows.items():
        ratios = [float(cells[i]) for i in (1, 3, 5, 8)]  # x smaller, create, load peak and latency x fp32
        assert all(r > 0 for r in ratios), (name, cells)
    assert float(rows["packed"][1]) > 4  # half pruned at 4 bits: the packed file is far smaller than fp32
