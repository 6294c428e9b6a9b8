"""`onnxjpq sweep`: the grid, its tables and figures, the Pareto front, the chosen point."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq import OptionError
from onnxjpq.cli import main
from onnxjpq.workflows.plots import plot_layers
from onnxjpq.workflows.sweep import SweepConfig, choose_point, pareto_front, plot_sweep_files, sweep
from onnxjpq.runtime.sessions import session

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5, TEST = MODELS / "lenet5.onnx", MODELS / "lenet5_test.npz"
MIN_PNG_BYTES = 5_000


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > MIN_PNG_BYTES


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- pure parts


def test_pareto_front_keeps_the_undominated_points():
    rates = [1, 2, 4, 8, 3, 4]
    scores = [99, 98.5, 98.6, 90, 97, 98.0]
    front = pareto_front(rates, scores)
    assert front == [0, 2, 3]
    for i in range(len(rates)):
        dominated = any(rates[j] >= rates[i] and scores[j] >= scores[i] and (rates[j], scores[j]) != (rates[i], scores[i])
                        for j in range(len(rates)))
        assert (i in front) == (not dominated)


def test_choose_point_prefers_the_highest_rate_within_the_drop():
    rows = [{"rate": 4, "agreement": 100.0}, {"rate": 16, "agreement": 99.1}, {"rate": 32, "agreement": 98.9}]
    assert choose_point(rows, 100.0, "agreement", 1.0)["rate"] == 16
    assert choose_point(rows, 100.0, "agreement", 2.0)["rate"] == 32
    assert choose_point(rows, 100.0, "agreement", 0.0)["rate"] == 4


def test_sweep_config_is_checked():
    with pytest.raises(OptionError, match="bits"):
        SweepConfig(bits=(9.0,))
    with pytest.raises(OptionError, match="prune"):
        SweepConfig(prunes=(1.0,))
    with pytest.raises(OptionError, match="not on the grid"):
        SweepConfig(prunes=(0.5,), bits=(4.0,), plot_point=(0.8, 4.0))
    with pytest.raises(OptionError, match="jobs"):
        SweepConfig(jobs=0)


# ---------------------------------------------------------------- a small grid


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    summary = sweep(LENET5, TEST, out, SweepConfig(prunes=(0.0, 0.5), bits=(4.0,), jobs=1))
    return out, summary


def test_sweep_writes_one_row_per_point(small_sweep):
    out, summary = small_sweep
    rows = _csv_rows(out / "sweep.csv")
    assert [(float(r["prune"]), float(r["bits"])) for r in rows] == [(0.0, 4.0), (0.5, 4.0)]
    assert set(rows[0]) >= {"prune", "bits", "rate", "storage_rate", "avg_bits", "bytes", "accuracy",
                            "agreement", "snr_db"}
    written = json.loads((out / "sweep.json").read_text())
    assert written["metric"] == "accuracy" and len(written["points"]) == 2
    assert written["reference"]["accuracy"] == pytest.approx(summary["reference"]["accuracy"])
    for row, point in zip(rows, written["points"]):
        assert float(row["rate"]) == pytest.approx(point["rate"])
        assert Path(point["model"]).is_file() and Path(point["report"]).is_file()
    assert written["points"][1]["prune_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert written["points"][1]["rate"] > written["points"][0]["rate"]


def test_sweep_accuracy_is_the_compressed_models_accuracy(small_sweep):
    _, summary = small_sweep
    data = np.load(TEST)
    for point in summary["points"]:
        logits = session(point["model"]).run(None, {"input": data["input"]})[0]
        assert point["accuracy"] == pytest.approx(100 * np.mean(logits.argmax(1) == data["labels"]))
    ref = session(LENET5).run(None, {"input": data["input"]})[0]
    assert summary["reference"]["accuracy"] == pytest.approx(100 * np.mean(ref.argmax(1) == data["labels"]))


def test_sweep_figures_are_drawn(small_sweep):
    out, summary = small_sweep
    paths = plot_sweep_files(summary, out)
    assert [p.name for p in paths] == ["sweep.png", "layers_p{:g}_b{:g}.png".format(*summary["plot_point"])]
    assert all(_png_ok(p) for p in paths)


def test_plot_layers_takes_a_file_or_a_folder(small_sweep, tmp_path):
    _, summary = small_sweep
    report = json.loads(Path(summary["points"][1]["report"]).read_text())
    assert _png_ok(plot_layers(report, tmp_path / "one.png"))
    assert plot_layers(report, tmp_path / "figures") == tmp_path / "figures" / "layers.png"
    assert _png_ok(tmp_path / "figures" / "layers.png")


# ---------------------------------------------------------------- the command


def test_sweep_cli_errors_are_one_line_and_exit_2(tmp_path):
    for args, message in ((["--prune", "0,a"], "comma-separated numbers"),
                          (["--bits", "12"], "bits must be in [2, 8]"),
                          (["--prune", "0.5", "--bits", "4", "--plot-point", "0.8,4"], "not on the grid"),
                          (["--data", str(tmp_path / "none.npz")], "not a readable .npz")):
        data = [] if "--data" in args else ["--data", str(TEST)]
        result = CliRunner().invoke(main, ["sweep", str(LENET5), "--out", str(tmp_path / "s"), *data, *args])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert result.output.count("\n") == 1 and message in result.output


@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: spawned workers, ~7 s
def test_sweep_cli_runs_the_grid_in_parallel_alike(tmp_path, jobs):
    out = tmp_path / f"jobs{jobs}"
    result = CliRunner().invoke(main, ["sweep", str(LENET5), "--data", str(TEST), "--prune", "0,0.5",
                                       "--bits", "8,4", "--jobs", str(jobs), "--out", str(out),
                                       "--plot-point", "0.5,4"])
    assert result.exit_code == 0, result.output
    rows = _csv_rows(out / "sweep.csv")
    assert [(r["prune"], r["bits"]) for r in rows] == [("0.0", "8.0"), ("0.0", "4.0"), ("0.5", "8.0"),
                                                       ("0.5", "4.0")]
    assert _png_ok(out / "sweep.png") and _png_ok(out / "layers_p0.5_b4.png")
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["plot_point"] == [0.5, 4.0] and summary["config"]["jobs"] == jobs
    # the same points, whichever process ran them
    serial = sweep(LENET5, TEST, tmp_path / "serial", SweepConfig(prunes=(0.0, 0.5), bits=(8.0, 4.0)))
    for got, expected in zip(summary["points"], serial["points"]):
        for key in ("rate", "storage_rate", "bytes", "accuracy", "agreement", "snr_db"):
            assert got[key] == pytest.approx(expected[key])
