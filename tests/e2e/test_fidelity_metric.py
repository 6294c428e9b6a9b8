"""The fidelity measure fits the model's output (issue 15, item 16).

Top-1 agreement over the dimensions of an embedding says nothing about it:
`compress --max-drop` and `eval` choose accuracy/agreement for class scores,
cosine for embeddings and feature maps, SNR for one value per sample, state
the choice, and take `--metric` to override it. The figures are checked
against numpy computations on the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxjpq import OptionError
from onnxjpq.cli import main
from onnxjpq.runtime.sessions import session
from onnxjpq.testing import laplace
from onnxjpq.workflows.fidelity import choose_metric, points

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5, TEST = MODELS / "lenet5.onnx", MODELS / "lenet5_test.npz"


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _mlp(path: Path, out_dim: int, name: str = "out", normalize: bool = False) -> Path:
    """x [N, 32] -> MatMul -> Relu -> MatMul + b (-> LpNormalization): an embedding or a regression."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])
    y = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", out_dim])
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["e" if normalize else name])]
    if normalize:
        nodes.append(helper.make_node("LpNormalization", ["e"], [name], axis=-1, p=2))
    weights = [numpy_helper.from_array(laplace((32, 96), 0.2, 1), "W1"),
               numpy_helper.from_array(laplace((96, out_dim), 0.1, 2), "W2"),
               numpy_helper.from_array(laplace((out_dim,), 0.05, 3), "b")]
    graph = helper.make_graph(nodes, "mlp", [x], [y], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _data(path: Path, samples: int = 256, seed: int = 0) -> Path:
    np.savez(path, x=np.random.default_rng(seed).standard_normal((samples, 32)).astype(np.float32))
    return path


def _outputs(model: Path, data: Path) -> np.ndarray:
    arrays = np.load(data)
    sess = session(str(model))
    return sess.run(None, {i.name: arrays[i.name] for i in sess.get_inputs()})[0].astype(np.float64)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    """A normalized 64-d embedding model, its data, and a compressed version at storage rate 16."""
    tmp = tmp_path_factory.mktemp("embedding")
    model, data, cand = _mlp(tmp / "emb.onnx", 64, normalize=True), _data(tmp / "d.npz"), tmp / "cand.onnx"
    result = _invoke("compress", model, "-o", cand, "--rate", 16, "--min-params", 0, "-q")
    assert result.exit_code == 0, result.output
    return model, data, cand


# ---------------------------------------------------------------- the choice


def test_class_scores_get_accuracy_or_agreement():
    lenet = onnx.load(str(LENET5))
    assert choose_metric("logits", [10], True, lenet).name == "accuracy"
    found = choose_metric("logits", [10], False, lenet)
    assert found.name == "agreement" and "class scores" in found.reason and "no labels" in found.reason
    assert choose_metric("token_logits", [12, 9], False).name == "agreement"  # per-token classes


def test_embeddings_feature_maps_and_regressions_get_cosine_or_snr(tmp_path):
    normalized = onnx.load(str(_mlp(tmp_path / "n.onnx", 64, normalize=True)))
    found = choose_metric("out", [64], False, normalized)
    assert found.name == "cosine" and "LpNormalization" in found.reason
    assert choose_metric("out", [64], True, normalized).reason.endswith("labels not used")
    assert choose_metric("sentence_embedding", [384], False).name == "cosine"
    assert choose_metric("last_hidden_state", [128, 384], False).name == "cosine"
    assert choose_metric("logits", [21, 64, 64], False).name == "cosine"  # a class axis not last: a feature map
    assert choose_metric("price", [1], False).name == "snr" and choose_metric("y", [], False).name == "snr"


def test_metric_option_overrides_and_is_checked():
    assert choose_metric("sentence_embedding", [384], False, asked="agreement").name == "agreement"
    assert choose_metric("logits", [10], True, asked="cosine").reason == "chosen with --metric"
    with pytest.raises(OptionError, match="needs labels"):
        choose_metric("logits", [10], False, asked="accuracy")
    with pytest.raises(OptionError, match="--metric"):
        choose_metric("logits", [10], False, asked="top5")


def test_points_are_100_for_the_reference_itself():
    assert points("cosine", cosine=1.0) == 100.0 and points("snr", snr_db=float("inf")) == 100.0
    assert points("snr", snr_db=10 * np.log10(200)) == pytest.approx(99.5)
    assert points("agreement", agreement=97.5) == 97.5


# ---------------------------------------------------------------- eval


def test_eval_of_an_embedding_model_headlines_cosine_not_agreement(embedding, tmp_path):
    model, data, cand = embedding
    out = tmp_path / "r.json"
    result = _invoke("eval", model, cand, "--data", data, "--runs", 0, "--json", out)
    assert result.exit_code == 0, result.output
    fid = json.loads(out.read_text())["fidelity"]
    cos = _mean_cosine(_outputs(model, data), _outputs(cand, data))
    assert fid["metric"] == "cosine" and "LpNormalization" in fid["reason"]
    assert fid["candidate"] == pytest.approx(100 * cos) and fid["drop"] == pytest.approx(100 * (1 - cos))
    assert "top-1 agreement" not in result.stderr and "fidelity by cosine" in result.stderr
    forced = _invoke("eval", model, cand, "--data", data, "--runs", 0, "--metric", "agreement")
    assert forced.exit_code == 0 and "fidelity by agreement" in forced.stderr and "top-1 agreement" in forced.stderr


def test_eval_max_drop_on_embeddings_counts_cosine_points(embedding):
    model, data, cand = embedding
    drop = 100 * (1 - _mean_cosine(_outputs(model, data), _outputs(cand, data)))
    assert drop > 0.01
    failed = _invoke("eval", model, cand, "--data", data, "--runs", 0, "--max-drop", drop / 2, "-q")
    assert failed.exit_code == 1 and "cosine points" in failed.stderr, failed.output
    assert _invoke("eval", model, cand, "--data", data, "--runs", 0, "--max-drop", drop * 2, "-q").exit_code == 0


def test_eval_of_a_regression_measures_output_energy_points(tmp_path):
    model, data, cand = _mlp(tmp_path / "reg.onnx", 1, name="y"), _data(tmp_path / "d.npz"), tmp_path / "c.onnx"
    assert _invoke("compress", model, "-o", cand, "--prune", 0.5, "--bits", 3, "--keep", "none",
                   "--min-params", 0, "-q").exit_code == 0
    out = tmp_path / "r.json"
    assert _invoke("eval", model, cand, "--data", data, "--runs", 0, "--json", out).exit_code == 0
    fid = json.loads(out.read_text())["fidelity"]
    ref, got = _outputs(model, data), _outputs(cand, data)
    assert fid["metric"] == "snr"
    assert fid["drop"] == pytest.approx(100 * ((ref - got) ** 2).sum() / (ref**2).sum(), rel=1e-5)


def test_eval_of_a_classifier_with_labels_keeps_accuracy_as_the_measure(tmp_path):
    out = tmp_path / "r.json"
    assert _invoke("eval", LENET5, LENET5, "--data", TEST, "--runs", 0, "--json", out).exit_code == 0
    got = json.loads(out.read_text())
    assert got["fidelity"]["metric"] == "accuracy"
    assert got["fidelity"]["candidate"] == got["metrics"]["accuracy"] and got["fidelity"]["drop"] == 0


# ---------------------------------------------------------------- compress --max-drop


def test_max_drop_on_an_embedding_model_searches_by_cosine_and_keeps_it(embedding, tmp_path):
    model, data, _ = embedding
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = _invoke("compress", model, "-o", out, "--max-drop", 1, "--data", data, "--report", report,
                     "--min-params", 0)
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    assert search["metric"] == "cosine" and "LpNormalization" in search["metric_reason"]
    assert "by cosine" in result.stderr and "cosine points" in result.stderr
    assert _mean_cosine(_outputs(model, data), _outputs(out, data)) >= 0.99
    assert all(e["ok"] == (e["drop"] <= 1) for e in search["evaluations"] if "drop" in e)
    assert any(not e["ok"] for e in search["evaluations"])  # the limit was met, not every rate passed


def test_max_drop_with_metric_snr_bounds_the_error_energy(embedding, tmp_path):
    model, data, _ = embedding
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = _invoke("compress", model, "-o", out, "--max-drop", 2, "--data", data, "--metric", "snr",
                     "--report", report, "--min-params", 0, "-q")
    assert result.exit_code == 0, result.output
    search = json.loads(report.read_text())["search"]
    assert search["metric"] == "snr" and search["metric_reason"] == "chosen with --metric"
    ref, got = _outputs(model, data), _outputs(out, data)
    assert 100 * ((ref - got) ** 2).sum() / (ref**2).sum() <= 2 + 1e-6


def test_metric_without_max_drop_is_refused():
    result = _invoke("compress", LENET5, "-o", "never.onnx", "--rate", 8, "--metric", "cosine")
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --metric chooses the measure of --max-drop; give --max-drop and --data")
    assert not Path("never.onnx").exists()


# ---------------------------------------------------------------- the real sentence encoder


@pytest.mark.slow
def test_minilm_eval_headlines_cosine_of_the_sentence_embeddings(tmp_path):
    minilm = pytest.importorskip("onnxjpq.zoo.minilm")
    try:
        minilm.model_dir()
    except Exception as exc:  # noqa: BLE001 - the weights package is optional
        pytest.skip(str(exc))
    model = minilm.export_minilm(tmp_path / "minilm.onnx")
    data = minilm.write_sentences_npz(tmp_path / "held.npz", minilm.heldout_sentences()[:32])
    cand, out = tmp_path / "m8.onnx", tmp_path / "r.json"
    assert _invoke("compress", model, "-o", cand, "--rate", 8, "-q").exit_code == 0
    result = _invoke("eval", model, cand, "--data", data, "--runs", 0, "--json", out)
    assert result.exit_code == 0, result.output
    fid = json.loads(out.read_text())["fidelity"]
    assert fid["metric"] == "cosine" and "norm" in fid["reason"]
    assert fid["candidate"] == pytest.approx(100 * _mean_cosine(_outputs(model, data), _outputs(cand, data)))
    assert "top-1 agreement" not in result.stderr
