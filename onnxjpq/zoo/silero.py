"""silero-vad's ONNX models as real-model test cases.

The silero-vad package ships several exports of the same voice-activity
detector (If-branched 8/16 kHz, opset 15, fp16 weights, If-less opset 18,
OpenVINO-friendly, whole-sequence). `speech_probabilities` streams audio through
any of them the way silero's own wrapper does (512-sample chunks at 16 kHz,
each with the previous 64 samples as context, the recurrent state carried), so
an original and a compressed model can be compared on the decisions a user
sees. No audio ships with the package: `synthetic_speech` makes vowel-like
voiced segments (a glottal pulse train through formant resonators) separated
by pauses of low noise.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy import signal

RATE = 16000
CHUNK = 512
CONTEXT = 64

MODEL_NAMES = ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx",
               "silero_vad_op18_ifless.onnx", "silero_vad_openvino_16k.onnx",
               "silero_vad_16k_sequence.onnx")

# (F1, F2, F3) in Hz of a few vowels
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def model_path(name: str) -> Path | None:
    """Path of a model file shipped by silero-vad, or None when the package or file is missing."""
    try:
        path = Path(str(importlib.resources.files("silero_vad") / "data" / name))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def _vowel(rng: np.random.Generator, n: int) -> np.ndarray:
    pitch = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * 5 * np.arange(n) / RATE))
    phase = np.cumsum(pitch / RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    x = signal.lfilter([1.0], [1.0, -0.95], pulses)  # glottal roll-off
    for formant in _VOWELS[rng.integers(len(_VOWELS))]:
        radius = np.exp(-np.pi * 80 / RATE)
        theta = 2 * np.pi * formant / RATE
        x = signal.lfilter([1 - radius], [1, -2 * radius * np.cos(theta), radius ** 2], x)
    envelope = np.sin(np.pi * np.arange(n) / n) ** 0.5
    return x * envelope / (np.abs(x).max() + 1e-9)


def synthetic_speech(seconds: float, seed: int) -> np.ndarray:
    """Mono 16 kHz float32 audio: syllables of 0.15-0.4 s in runs, pauses of 0.2-0.8 s."""
    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    parts, length = [], 0
    while length < total:
        for _ in range(rng.integers(2, 6)):
            n = int(rng.uniform(0.15, 0.4) * RATE)
            parts.append(0.5 * _vowel(rng, n))
            length += n
        n = int(rng.uniform(0.2, 0.8) * RATE)
        parts.append(0.003 * rng.standard_normal(n))
        length += n
    audio = np.concatenate(parts)[:total]
    return audio.astype(np.float32)


def _frames(audio: np.ndarray) -> np.ndarray:
    """[chunks, CONTEXT + CHUNK]: each chunk with the samples before it as context."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    count = len(audio) // CHUNK
    return np.stack([padded[i * CHUNK:i * CHUNK + CONTEXT + CHUNK] for i in range(count)])


def speech_probabilities(session: ort.InferenceSession, audio: np.ndarray) -> np.ndarray:
    """Per-chunk speech probability of `audio` under one of silero-vad's models."""
    names = {i.name for i in session.get_inputs()}
    frames = _frames(audio)
    if "h" in names:  # the whole-sequence export
        zeros = np.zeros((1, 1, 128), np.float32)
        return session.run(None, {"input": frames, "h": zeros, "c": zeros})[0].reshape(-1)
    state = np.zeros((2, 1, 128), np.float32)
    probabilities = []
    for frame in frames:
        feeds = {"input": frame[None], "state": state}
        if "sr" in names:
            feeds["sr"] = np.array(RATE, np.int64)
        probability, state = session.run(None, feeds)[:2]
        probabilities.append(float(probability.reshape(-1)[0]))
    return np.asarray(probabilities, np.float32)


def fidelity(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How closely two probability tracks agree: decisions at `threshold`, largest and mean gap."""
    gap = np.abs(reference - candidate)
    return {"agreement": float(np.mean((reference >= threshold) == (candidate >= threshold))),
            "max_abs_diff": float(gap.max()), "mean_abs_diff": float(gap.mean()),
            "speech_share": float(np.mean(reference >= threshold))}
