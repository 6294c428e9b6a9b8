"""End to end through the CLI: the bundled LeNets and silero-vad's real models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import accuracy, predict, session

pytestmark = pytest.mark.slow


def _compress(src, dst, *options) -> dict:
    report = dst.with_suffix(".json")
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(dst), "-q", "--report", str(report),
                                       *map(str, options)])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(report.read_text())


def _accuracy(model_path, data_path) -> float:
    sess = session(model_path)
    data = load_dataset(data_path, sess)
    return accuracy(predict(sess, data), data.labels)


@pytest.fixture(scope="module")
def lenet5_fp32_accuracy(lenet5_path, lenet5_test_path):
    return _accuracy(lenet5_path, lenet5_test_path)


def test_lenet5_at_half_pruning_and_4_bits_meets_targets_and_keeps_accuracy(
        lenet5_path, lenet5_test_path, lenet5_fp32_accuracy, tmp_path):
    out = tmp_path / "lenet5.onnx"
    report = _compress(lenet5_path, out, "--prune", "0.5", "--bits", "4")
    totals = report["totals"]
    assert totals["prune_ratio"] == pytest.approx(0.5, abs=0.01)
    assert totals["avg_bits"] == pytest.approx(4, abs=0.1)
    onnx.checker.check_model(onnx.load(str(out)))
    assert _accuracy(out, lenet5_test_path) >= lenet5_fp32_accuracy - 1.0
    assert out.stat().st_size <= 0.2 * lenet5_path.stat().st_size
    assert totals["bytes_out"] == out.stat().st_size


@pytest.mark.parametrize("prune, bits", [(0.8, 4), (0.9, 3)])
def test_lenet5_at_high_pruning_meets_targets_and_runs(prune, bits, lenet5_path, lenet5_test_path, tmp_path):
    out = tmp_path / "lenet5.onnx"
    totals = _compress(lenet5_path, out, "--prune", prune, "--bits", bits)["totals"]
    assert totals["prune_ratio"] == pytest.approx(prune, abs=0.01)
    assert totals["avg_bits"] == pytest.approx(bits, abs=0.1)
    onnx.checker.check_model(onnx.load(str(out)))
    # runs, and still classifies far better than chance (10 classes)
    assert _accuracy(out, lenet5_test_path) > 20


def test_lenet5_without_pruning_meets_the_bit_budget(lenet5_path, tmp_path):
    totals = _compress(lenet5_path, tmp_path / "lenet5.onnx", "--prune", "0", "--bits", "4")["totals"]
    assert totals["avg_bits"] == pytest.approx(4, abs=0.1)


def test_lenet300_compresses_and_keeps_accuracy(lenet300_path, lenet300_test_path, tmp_path):
    out = tmp_path / "lenet300.onnx"
    totals = _compress(lenet300_path, out, "--prune", "0.5", "--bits", "4")["totals"]
    assert totals["prune_ratio"] == pytest.approx(0.5, abs=0.01)
    assert totals["avg_bits"] == pytest.approx(4, abs=0.1)
    onnx.checker.check_model(onnx.load(str(out)))
    assert _accuracy(out, lenet300_test_path) >= _accuracy(lenet300_path, lenet300_test_path) - 2.0


# ------------------------------------------------------------------------ silero-vad


def _speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Band-limited noise with a syllable-rate (4 Hz) envelope, peak 0.2."""
    x = np.cumsum(rng.standard_normal(n))
    x -= np.convolve(x, np.ones(32) / 32, mode="same")  # remove the random walk's drift
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000 + rng.uniform(0, 2 * np.pi))
    x *= envelope
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def _silero_feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    """Feeds for the inputs the model has: input [1, N] (N = its static size, else 512),
    state zeros [2, 1, 128], sr = 16000."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if value.name == "input":
            feeds["input"] = _speech_like(rng, dims[1] or 512)[None]
        elif value.name == "state":
            feeds["state"] = np.zeros((2, 1, 128), np.float32)
        elif value.name == "sr":
            feeds["sr"] = np.array(16000, np.int64)
    assert set(feeds) >= {"input", "state"}
    return feeds


SILERO_MODELS = ["silero_vad_16k_op15.onnx", "silero_vad_openvino_16k.onnx"]


@pytest.mark.real
@pytest.mark.parametrize("name", SILERO_MODELS)
def test_silero_vad_compresses_and_keeps_its_speech_probability(name, silero_model_path, tmp_path):
    src = silero_model_path(name)
    out = tmp_path / "vad.onnx"
    totals = _compress(src, out, "--prune", "0.3", "--bits", "6")["totals"]
    assert totals["prune_ratio"] == pytest.approx(0.3, abs=0.01)
    compressed, original = onnx.load(str(out)), onnx.load(str(src))
    onnx.checker.check_model(compressed)
    ref, cand = session(original), session(compressed)
    for seed in range(4):
        feeds = _silero_feeds(original, seed)
        p_ref, p_cand = ref.run(["output"], feeds)[0], cand.run(["output"], feeds)[0]
        assert p_cand.shape == p_ref.shape
        assert np.abs(p_cand - p_ref).max() < 0.1, (seed, p_ref, p_cand)


def test_demo_prints_the_accuracy_table():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, (result.output, result.exception)
    for text in ("fp32", "--prune 0.5 --bits 4", "--prune 0.9 --bits 3", "accuracy", "%"):
        assert text in result.stderr
