"""The bridge on real exported models: the six zoo CNNs (vision and audio), every silero-vad export
(streamed with its If/LSTM state) and the MiniLM sentence encoder give onnxruntime's outputs, and
the gradient reaches every weight of one of them.

Each test skips, naming the package, when the package that ships its weights is missing.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxjpq.finetune.bridge import OnnxModule  # noqa: E402
from onnxjpq.testing import run  # noqa: E402
from onnxjpq.zoo import silero  # noqa: E402
from onnxjpq.zoo.cnns import CNNS  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]


def _bridge(module: OnnxModule, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in module(*[torch.from_numpy(feeds[n]) for n in module.input_names])]


@pytest.mark.parametrize("entry", CNNS, ids=[e.name for e in CNNS])
def test_zoo_cnns_match_onnxruntime(entry, tmp_path):
    if not entry.available():
        pytest.skip(f"pip install --no-deps {entry.distribution}")
    model = onnx.load(entry.export(tmp_path))
    module = OnnxModule(model)
    data = entry.data(2, 0)
    feeds = {n: data[n] for n in module.input_names}
    for got, want in zip(_bridge(module, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", silero.MODEL_NAMES)
def test_silero_exports_streamed_through_the_bridge_match_onnxruntime(name):
    import onnxruntime as ort

    path = silero.model_path(name)
    if path is None:
        pytest.skip(f"{name} is not shipped by the installed silero-vad")
    module = OnnxModule(onnx.load(path))
    audio = silero.synthetic_speech(2, 0)
    want = silero.speech_probabilities(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), audio)
    frames = silero._frames(audio)
    if "h" in module.input_names:  # the whole-sequence export
        zeros = np.zeros((1, 1, 128), np.float32)
        got = _bridge(module, {"input": frames, "h": zeros, "c": zeros})[0].reshape(-1)
    else:
        state, got = np.zeros((2, 1, 128), np.float32), []
        for frame in frames:
            feeds = {"input": frame[None], "state": state, "sr": np.array(silero.RATE, np.int64)}
            probability, state = _bridge(module, feeds)[:2]
            got.append(float(probability.reshape(-1)[0]))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_minilm_sentence_embeddings_match_onnxruntime(tmp_path):
    from onnxjpq.errors import ModelError
    from onnxjpq.zoo import minilm

    try:
        path = minilm.export_minilm(tmp_path / "minilm.onnx")
    except ModelError as exc:
        pytest.skip(str(exc))
    model = onnx.load(path)
    module = OnnxModule(model)
    encoded = minilm.encode_sentences(["The bridge runs this encoder in torch.",
                                       "A second sentence, a little longer than the first one."])
    feeds = {n: encoded[n] for n in module.input_names}
    for got, want in zip(_bridge(module, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_gradient_reaches_every_weight_of_a_real_lstm_export():
    path = silero.model_path("silero_vad_16k_sequence.onnx")
    if path is None:
        pytest.skip("pip install silero-vad")
    module = OnnxModule(onnx.load(path))
    frames = torch.from_numpy(silero._frames(silero.synthetic_speech(1, 0)))
    zeros = torch.zeros(1, 1, 128)
    module(frames, zeros, zeros)[0].sum().backward()
    weights = module.named_weights()
    assert weights and all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights.values())
    assert sum(bool(p.grad.abs().sum() > 0) for p in weights.values()) >= 0.9 * len(weights)
