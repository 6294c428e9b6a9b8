"""`compress --max-drop` keeps every budget option the user gave (the search changes only the rate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"


def _search(tmp_path: Path, *options: str) -> dict:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q",
                                       "--max-drop", "0.5", "--data", str(MODELS / "lenet5_test.npz"),
                                       "--report", str(report), *options])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


@pytest.fixture
def solved_configs(monkeypatch):
    """Every budget config the search compresses with."""
    import onnxjpq.workflows.search as search

    seen, real = [], search.compress_model

    def spy(model, config, *args, **kwargs):
        seen.append(config)
        return real(model, config, *args, **kwargs)

    monkeypatch.setattr(search, "compress_model", spy)
    return seen


@pytest.mark.slow
def test_max_bits_bounds_every_layer_of_the_searched_model(tmp_path, solved_configs):
    report = _search(tmp_path, "--max-bits", "4")
    assert report["settings"]["config"]["max_bits"] == 4
    assert max(r["bits"] for r in report["layers"]) <= 4
    assert solved_configs and all(c.max_bits == 4 for c in solved_configs)


@pytest.mark.slow
@pytest.mark.parametrize("options, field, value", [
    (["--pow2-bits"], "pow2", True),
    (["--min-bits", "3"], "min_bits", 3),
    (["--objective", "bops"], "objective", "bops"),
    (["--granularity", "layer"], "granularity", "layer"),
    (["--granularity", "channel"], "granularity", "channel"),
])
def test_every_budget_option_reaches_each_searched_rate(tmp_path, solved_configs, options, field, value):
    report = _search(tmp_path, *options)
    assert report["settings"]["config"][field] == value
    assert len(solved_configs) > 2 and all(getattr(c, field) == value for c in solved_configs)
    if field == "granularity":
        assert all(r["per_channel_steps"] is (value == "channel") for r in report["layers"])
    if field == "objective":
        assert report["totals"]["objective"] == "bops"
