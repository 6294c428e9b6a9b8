"""`onnxjpq eval`: metrics, the comparison of two models, data sources and their errors."""

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxjpq import DataError, OpqConfig, OptionError, compress_file
from onnxjpq.cli import main
from onnxjpq.workflows.evaluate import (EvalConfig, ErrorSums, Tally, agreement, cosine, evaluate_files, max_abs,
                              snr_db, to_json, top1_accuracy)
from onnxjpq.graph.io import file_bytes
from onnxjpq.runtime.data import load_dataset, open_batches
from onnxjpq.runtime.sessions import session

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5, TEST = MODELS / "lenet5.onnx", MODELS / "lenet5_test.npz"


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("eval") / "lenet5_p05_b4.onnx"
    compress_file(LENET5, dst, OpqConfig(prune=0.5, bits=4))
    return dst


def _eval(*args: str):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


# ---------------------------------------------------------------- pure metrics


def test_snr_of_known_arrays():
    ref = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert snr_db(ref, ref + np.array([[0.0, 0.5], [0.0, 0.0]])) == pytest.approx(20.0)  # 25 / 0.25
    assert snr_db(ref, ref * 0.9) == pytest.approx(20.0)  # noise = 1 % of the signal
    assert snr_db(ref, ref) == np.inf
    assert snr_db(np.zeros(3), np.ones(3)) == -np.inf


def test_cosine_and_max_abs_of_known_arrays():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert cosine(ref, np.array([[0.0, 2.0], [-1.0, -1.0], [0.0, 0.0]])) == pytest.approx((0 - 1 + 1) / 3)
    assert cosine(ref, 3 * ref) == pytest.approx(1.0)
    images = np.arange(24.0).reshape(2, 3, 2, 2)  # flattened per sample
    assert cosine(images, images[:, ::-1]) == pytest.approx(np.mean(
        [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(images.reshape(2, -1),
                                                                        images[:, ::-1].reshape(2, -1))]))
    assert max_abs(ref, ref - np.array([[0.0, 0.25], [-3.0, 0.0], [0.0, 0.0]])) == 3.0


def test_agreement_and_accuracy_take_the_last_axis():
    ref = np.zeros((2, 3, 4))
    ref[0, :, 1] = 1
    ref[1, :, 2] = 1
    cand = ref.copy()
    cand[1, 0, 3] = 5  # one of 6 positions changes its class
    assert agreement(ref, cand) == pytest.approx(500 / 6)
    assert top1_accuracy(cand, np.array([[1, 1, 1], [3, 2, 2]])) == 100.0
    with pytest.raises(DataError, match="labels of shape"):
        top1_accuracy(cand, np.array([1, 2]))


def test_streamed_sums_equal_the_whole_array_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal((50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    sums, tally = ErrorSums(), Tally()
    for start in range(0, 50, 16):
        sl = slice(start, start + 16)
        sums, tally = sums.add(ref[sl], cand[sl]), tally.add(ref[sl], cand[sl], labels[sl])
    m, t = sums.metrics(), tally.metrics()
    assert m["snr_db"] == pytest.approx(snr_db(ref, cand))
    assert m["cosine"] == pytest.approx(cosine(ref, cand))
    assert m["max_abs"] == pytest.approx(max_abs(ref, cand))
    assert t["agreement"] == pytest.approx(agreement(ref, cand))
    assert t["accuracy"] == pytest.approx(top1_accuracy(cand, labels))
    assert t["ref_accuracy"] == pytest.approx(top1_accuracy(ref, labels))


def test_eval_config_is_checked():
    with pytest.raises(OptionError, match="--batch"):
        EvalConfig(batch=0)
    with pytest.raises(OptionError, match="--runs"):
        EvalConfig(runs=-1)


# ---------------------------------------------------------------- the eval command


def test_eval_matches_an_independent_numpy_computation(candidate, tmp_path):
    out = tmp_path / "eval.json"
    result = _eval(LENET5, candidate, "--data", TEST, "--json", out, "--runs", 3, "--warmup", 1,
                   "--threads", 1, "--batch", 100)
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output
    got = json.loads(out.read_text())
    data = np.load(TEST)
    ref = session(LENET5).run(None, {"input": data["input"]})[0].astype(np.float64)
    cand = session(candidate).run(None, {"input": data["input"]})[0].astype(np.float64)
    m = got["metrics"]
    assert m["ref_accuracy"] == pytest.approx(100 * np.mean(ref.argmax(1) == data["labels"]))
    assert m["accuracy"] == pytest.approx(100 * np.mean(cand.argmax(1) == data["labels"]))
    assert m["agreement"] == pytest.approx(100 * np.mean(ref.argmax(1) == cand.argmax(1)))
    assert m["snr_db"] == pytest.approx(10 * np.log10((ref**2).sum() / ((ref - cand) ** 2).sum()), rel=1e-6)
    rows = (ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)
    assert m["cosine"] == pytest.approx(rows.mean())
    assert m["max_abs"] == pytest.approx(np.abs(ref - cand).max())
    assert m["latency_ms"] > 0 and m["ref_latency_ms"] > 0
    assert m["latency_ratio"] == pytest.approx(m["latency_ms"] / m["ref_latency_ms"])
    assert got["threads"] == 1 and got["samples"] == 450 and got["timing"]["batch"] == 100
    assert got["sizes"] == {"bytes_ref": file_bytes(LENET5), "bytes_cand": file_bytes(candidate),
                            "size_ratio": pytest.approx(file_bytes(LENET5) / file_bytes(candidate))}
    assert got["totals"]["prune_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert got["totals"]["rate"] > 10


def test_a_model_against_itself_has_infinite_snr_written_as_null(tmp_path):
    result = evaluate_files(LENET5, LENET5, TEST, EvalConfig(runs=0))
    assert result["metrics"]["agreement"] == 100.0 and result["metrics"]["snr_db"] == np.inf
    assert result["metrics"]["latency_ms"] is None and result["totals"] is None
    written = json.loads(to_json(result))
    assert written["metrics"]["snr_db"] is None and written["outputs"][0]["cosine"] == pytest.approx(1.0)


def test_without_labels_eval_reports_agreement_only(candidate, tmp_path):
    data = np.load(TEST)
    np.savez(tmp_path / "unlabelled.npz", input=data["input"][:100])
    result = evaluate_files(LENET5, candidate, tmp_path / "unlabelled.npz", EvalConfig(runs=0))
    assert result["labelled"] is False and result["samples"] == 100
    assert result["metrics"]["accuracy"] is None and result["metrics"]["ref_accuracy"] is None
    assert 90 <= result["metrics"]["agreement"] <= 100


def test_labels_option_names_the_labels_array(candidate, tmp_path):
    data = np.load(TEST)
    np.savez(tmp_path / "renamed.npz", input=data["input"], y=data["labels"])
    result = evaluate_files(LENET5, candidate, tmp_path / "renamed.npz", EvalConfig(runs=0, labels_key="y"))
    expected = evaluate_files(LENET5, candidate, TEST, EvalConfig(runs=0))
    assert result["metrics"]["accuracy"] == expected["metrics"]["accuracy"]


# ---------------------------------------------------------------- errors: one line, exit 2


def _bad_npz(tmp_path, **arrays) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "no array for model input(s) input"),
    ({"input": np.zeros((4, 8, 8), np.float32)}, "(rank 3); the model expects input [N, 1, 8, 8]"),
    ({"input": np.zeros((4, 1, 9, 8), np.float32)}, "size 9 on axis 2"),
    ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "is float64; the model expects float32"),
    ({"input": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(5, np.int64)}, "different lengths"),
    ({"input": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros((4, 3), np.int64)}, "labels of shape"),
])
def test_bad_data_is_one_line_and_exit_2(candidate, tmp_path, arrays, message):
    result = _eval(LENET5, candidate, "--data", _bad_npz(tmp_path, **arrays), "--runs", 0)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert message in result.output


@pytest.mark.parametrize("data, message", [
    ("no_such_module_xyz:batches", "neither a file nor an importable module"),
    ("missing.npz", "not a readable .npz file"),
    ("json:no_such_function", "module json has no function no_such_function"),
])
def test_bad_data_source_is_one_line_and_exit_2(candidate, data, message):
    result = _eval(LENET5, candidate, "--data", data, "--runs", 0)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert message in result.output


def test_a_file_that_is_not_onnx_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = _eval(LENET5, bad, "--data", TEST)
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_load_dataset_checks_shapes_against_the_model(tmp_path):
    path = _bad_npz(tmp_path, input=np.zeros((4, 1, 8, 7), np.float32))
    with pytest.raises(DataError, match=r"shape \[4, 1, 8, 7\], size 7 on axis 3"):
        load_dataset(path, session(LENET5))


# ---------------------------------------------------------------- module:function data


def _write_module(tmp_path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_entry_point_data_gives_the_npz_figures(candidate, tmp_path, monkeypatch):
    _write_module(tmp_path, "digits_feed", f"""
        import numpy as np

        def batches():
            data = np.load({str(TEST)!r})
            for start in range(0, 450, 100):  # preprocessing would happen here
                yield {{"input": data["input"][start:start + 100], "labels": data["labels"][start:start + 100]}}
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    from_npz = evaluate_files(LENET5, candidate, TEST, EvalConfig(runs=0, batch=64))
    from_function = evaluate_files(LENET5, candidate, "digits_feed:batches", EvalConfig(runs=2, batch=64))
    assert from_function["samples"] == 450 and from_function["labelled"]
    for key in ("accuracy", "ref_accuracy", "agreement", "snr_db", "cosine", "max_abs"):
        assert from_function["metrics"][key] == pytest.approx(from_npz["metrics"][key])
    assert from_function["timing"]["batch"] == 64  # the function's batches of 100 are split to --batch


def test_entry_point_returning_one_dict_without_labels(candidate, tmp_path, monkeypatch):
    _write_module(tmp_path, "one_feed", f"""
        import numpy as np

        def feed():
            return {{"input": np.load({str(TEST)!r})["input"][:30]}}
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["eval", str(LENET5), str(candidate), "--data", "one_feed:feed",
                                       "--runs", "1", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "30 samples" in result.output and "top-1 accuracy" not in result.output


@pytest.mark.parametrize("body, message", [
    ("def f():\n    return [{'image': np.zeros((2, 1, 8, 8), np.float32)}]\n", "the model's inputs are input"),
    ("def f():\n    return [np.zeros((2, 1, 8, 8), np.float32)]\n", "expected a dict of input name"),
    ("def f():\n    return [{'input': np.zeros((2, 1, 8, 8))}]\n", "is float64"),
    ("def f():\n    return []\n", "the function gave no samples"),
    ("def f():\n    x = np.zeros((2, 1, 8, 8), np.float32)\n"
     "    return [{'input': x, 'labels': np.zeros(2, int)}, {'input': x}]\n", "given for some batches"),
])
def test_bad_entry_point_feeds_are_one_line_and_exit_2(candidate, tmp_path, monkeypatch, body, message):
    name = "bad_feed_" + hashlib.sha1(body.encode()).hexdigest()[:10]  # a fresh module per case
    _write_module(tmp_path, name, "import numpy as np\n\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _eval(LENET5, candidate, "--data", f"{name}:f", "--runs", 0)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert message in result.output


# ---------------------------------------------------------------- models with a fixed batch size


def _fixed_batch_model(path: Path, batch: int) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_fixed_batch_size_sets_the_batches(tmp_path):
    model = _fixed_batch_model(tmp_path / "fixed.onnx", 2)
    np.savez(tmp_path / "six.npz", x=np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    batches = open_batches(tmp_path / "six.npz", session(model), batch=64)
    assert [len(feed["x"]) for feed, _ in batches] == [2, 2, 2] and batches.count == 3
    np.savez(tmp_path / "five.npz", x=np.zeros((5, 4), np.float32))
    with pytest.raises(DataError, match="fixed batch size 2"):
        open_batches(tmp_path / "five.npz", session(model), batch=64)
