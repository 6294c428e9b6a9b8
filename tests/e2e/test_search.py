"""Accuracy-aware search (--max-drop) on the bundled CNN."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq import OptionError
from onnxjpq.cli import main
from onnxjpq.graph.io import load_model
from onnxjpq.workflows.search import SearchConfig, search_rate
from onnxjpq.runtime.data import Dataset, load_dataset
from onnxjpq.runtime.sessions import predict, session

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.slow
def test_max_drop_cli_returns_a_model_within_the_drop(tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "--max-drop",
                                       "0.5", "--data", str(MODELS / "lenet5_test.npz"), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "storage rate" in result.output
    data = np.load(MODELS / "lenet5_test.npz")
    ref = session(str(MODELS / "lenet5.onnx")).run(None, {"input": data["input"]})[0].argmax(1)
    cand = session(str(out)).run(None, {"input": data["input"]})[0].argmax(1)
    drop = 100 * ((ref == data["labels"]).mean() - (cand == data["labels"]).mean())
    assert drop <= 0.5
    search = json.loads(report.read_text())["search"]
    assert search["chosen_rate"] >= 8
    assert all(e["ok"] == (e["drop"] <= 0.5) for e in search["evaluations"] if "drop" in e)


@pytest.mark.slow
def test_search_without_labels_measures_agreement():
    model = load_model(MODELS / "lenet5.onnx")
    labelled = load_dataset(MODELS / "lenet5_test.npz", session(model))
    data = Dataset(labelled.inputs, None)
    out, report = search_rate(model, SearchConfig(max_drop=1.0), data)
    assert report["search"]["metric"] == "agreement"
    ref = predict(session(model), data).argmax(1)
    agreement = 100 * (predict(session(out), data).argmax(1) == ref).mean()
    assert agreement >= 99.0


def test_search_config_is_checked():
    with pytest.raises(OptionError):
        SearchConfig(max_drop=-1)
    with pytest.raises(OptionError):
        SearchConfig(max_drop=1, start_rate=600)


def test_a_model_onnxruntime_rejects_is_a_one_line_error(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]),
                               helper.make_node("Mystery", ["h"], ["y"], domain="example.custom")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    src = tmp_path / "custom.onnx"
    onnx.save_model(model, str(src))
    np.savez(tmp_path / "d.npz", x=np.ones((3, 4), np.float32))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--max-drop", "1",
                                       "--data", str(tmp_path / "d.npz")])
    assert result.exit_code == 2
    assert "onnxruntime does not know" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_an_unreachable_max_drop_exits_1_with_one_line(tmp_path):
    """Two output classes separated by tiny weight differences: any compression flips them."""
    import onnx

    from onnxjpq.testing import make_model

    rng = np.random.default_rng(0)
    column = rng.laplace(0, 0.1, (64, 1))
    weights = np.hstack([column, column + 1e-5 * rng.standard_normal((64, 1))]).astype(np.float32)
    model = make_model("agraph (float[N, 64] x) => (float[N, 2] y) { y = MatMul (x, W) }", {"W": weights})
    src, out, data = tmp_path / "tie.onnx", tmp_path / "out.onnx", tmp_path / "d.npz"
    onnx.save_model(model, str(src))
    np.savez(data, x=rng.standard_normal((200, 64)).astype(np.float32))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "--max-drop", "0.5",
                                       "--data", str(data), "-q"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: even rate"), result.output
    assert not out.exists()


def test_agreement_on_a_sequence_counts_each_position():
    from onnxjpq.workflows.search import _score
    reference = np.zeros((2, 4, 3))
    reference[:, :, 0] = 1.0  # class 0 at every position
    candidate = reference.copy()
    candidate[0, 1] = [0.0, 2.0, 0.0]  # one of 8 positions changes class
    assert _score("agreement", candidate, reference, None) == pytest.approx(87.5)
