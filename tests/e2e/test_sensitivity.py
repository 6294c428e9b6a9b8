"""`onnxjpq sensitivity`: one layer compressed at a time, measured, ranked."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq import OpqConfig, OptionError, Selection
from onnxjpq.cli import main
from onnxjpq.pipeline.compress import OutputConfig, compress_model
from onnxjpq.workflows.evaluate import snr_db
from onnxjpq.graph.io import load_model
from onnxjpq.workflows.sensitivity import SensitivityConfig, measure_sensitivity, rank_layers
from onnxjpq.runtime.sessions import session

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_rank_layers_puts_the_most_harmful_first():
    rows = [{"layer": n, "snr_db": s, "agreement_drop": d}
            for n, s, d in (("a", 20.0, 0.0), ("b", 5.0, 1.0), ("c", 12.0, 3.0), ("d", float("inf"), 0.0))]
    by_snr = rank_layers(rows, "snr", "agreement")
    assert [r["layer"] for r in by_snr] == ["b", "c", "a", "d"] and [r["rank"] for r in by_snr] == [1, 2, 3, 4]
    assert [r["layer"] for r in rank_layers(rows, "drop", "agreement")] == ["c", "b", "a", "d"]


def test_sensitivity_config_is_checked():
    with pytest.raises(OptionError):
        SensitivityConfig(bits=1.0)
    with pytest.raises(OptionError, match="rank by"):
        SensitivityConfig(rank_by="size")


def test_sensitivity_cli_ranks_every_layer(tmp_path):
    out, png = tmp_path / "sens.json", tmp_path / "sens.png"
    src, data = MODELS / "lenet300.onnx", MODELS / "lenet300_test.npz"
    result = CliRunner().invoke(main, ["sensitivity", str(src), "--data", str(data), "--prune", "0.8",
                                       "--bits", "3", "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    layers = got["layers"]
    assert sorted(r["layer"] for r in layers) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [r["rank"] for r in layers] == [1, 2, 3]
    assert [r["snr_db"] for r in layers] == sorted(r["snr_db"] for r in layers)
    assert all(r["prune_ratio"] == pytest.approx(0.8, abs=0.01) for r in layers)
    assert got["metric"] == "accuracy" and got["reference"]["accuracy"] > 90
    assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert all(r["layer"] in result.output for r in layers)


def test_a_layers_figures_are_those_of_compressing_it_alone():
    src, data_path = MODELS / "lenet300.onnx", MODELS / "lenet300_test.npz"
    result = measure_sensitivity(src, data_path, SensitivityConfig(prune=0.5, bits=3))
    row = next(r for r in result["layers"] if r["layer"] == "fc2.weight")
    model = load_model(src)
    alone, _ = compress_model(model, OpqConfig(prune=0.5, bits=3),
                              Selection(include=("fc2.weight",), keep=()), OutputConfig(format="float"))
    data = np.load(data_path)
    ref = session(model).run(None, {"input": data["input"]})[0]
    cand = session(alone).run(None, {"input": data["input"]})[0]
    assert row["snr_db"] == pytest.approx(snr_db(ref, cand), rel=1e-6)
    assert row["accuracy"] == pytest.approx(100 * np.mean(cand.argmax(1) == data["labels"]))
    assert row["agreement"] == pytest.approx(100 * np.mean(cand.argmax(1) == ref.argmax(1)))


def test_sensitivity_of_the_cnn_without_labels_ranks_by_agreement(tmp_path):
    data = np.load(MODELS / "lenet5_test.npz")
    np.savez(tmp_path / "inputs.npz", input=data["input"])
    result = measure_sensitivity(MODELS / "lenet5.onnx", tmp_path / "inputs.npz",
                                 SensitivityConfig(prune=0.8, bits=3, rank_by="drop"))
    assert result["metric"] == "agreement" and len(result["layers"]) == 6
    drops = [r["agreement_drop"] for r in result["layers"]]
    assert drops == sorted(drops, reverse=True)
    assert all(r["accuracy"] is None for r in result["layers"])


def test_sensitivity_cli_errors_are_one_line_and_exit_2(tmp_path):
    src = MODELS / "lenet300.onnx"
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((3, 65), np.float32))
    for args, message in ((["--data", str(bad)], "size 65 on axis 1"),
                          (["--data", str(MODELS / "lenet300_test.npz"), "--prune", "1.5"], "prune ratio")):
        result = CliRunner().invoke(main, ["sensitivity", str(src), *args])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
