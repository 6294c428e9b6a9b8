"""Spotify's Basic Pitch note transcriber (basic-pitch's ONNX file) on synthesised melodies.

The PyPI package `basic-pitch` (0.4.0) ships the ICASSP 2022 model as
`saved_models/icassp_2022/nmp.onnx` (230 kB, 36 k weights, opset 15).
Install it with `--no-deps` (its dependencies include TensorFlow); only the
file is used. Input `serving_default_input_2:0` [batch, 43844, 1]: 2 s of
mono audio at 22050 Hz minus one hop. Outputs [batch, 172 frames, ...] at
86 frames/s: `StatefulPartitionedCall:1` note activations (88 piano keys,
MIDI 21-108), `:2` onsets (88), `:0` pitch contour (264, a third of a
semitone). The harmonic CQT front end is in the graph: its STFT kernels
(two 36x1x1x256 Conv weights, a 256-tap window) are Conv weights onnxjpq
finds like any other, beside the 2-D convolutions of the network proper.
No depthwise convolution.

Data: `basicpitch_data(n, seed)` makes n windows of a monophonic melody:
notes of 0.25-0.7 s on MIDI 40-84, gaps of 0-0.2 s, each a harmonic tone
(harmonics to 8 kHz, 1/k amplitudes) with a 10 ms attack and an exponential
decay. The piano roll of the notes is under `notes` [n, 172, 88] (uint8).

Metric: frame-level transcription as basic-pitch's note creation reads it,
note activations above 0.3 (its frame threshold) and onsets above 0.5: F1
of the candidate's active (frame, key) cells against the fp32 model's
(`note_f1`, `onset_f1`) and against the piano roll (`basicpitch_truth`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr

NAME = "basicpitch"
DISTRIBUTION = "basic-pitch"
PACKAGE = "basic_pitch"
FILE = "saved_models/icassp_2022/nmp.onnx"
INPUT = "serving_default_input_2:0"
OUTPUTS = {"note": "StatefulPartitionedCall:1", "onset": "StatefulPartitionedCall:2",
           "contour": "StatefulPartitionedCall:0"}
RATE, HOP, SAMPLES, FRAMES, KEYS, LOWEST = 22050, 256, 43844, 172, 88, 21
FRAME_THRESHOLD, ONSET_THRESHOLD = 0.3, 0.5


def model_file() -> Path:
    return ppocr.package_file(PACKAGE, DISTRIBUTION, FILE)


def export_basicpitch(folder) -> Path:
    """Copy the model to `folder/basicpitch.onnx`."""
    return ppocr.copy_model(model_file(), folder, f"{NAME}.onnx")


def _window(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    audio = np.zeros(SAMPLES)
    roll = np.zeros((FRAMES, KEYS), np.uint8)
    start = rng.uniform(0.0, 0.15)
    while start < SAMPLES / RATE - 0.2:
        length, midi = rng.uniform(0.25, 0.7), int(rng.integers(40, 85))
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        first, last = int(start * RATE), min(SAMPLES, int((start + length) * RATE))
        t = np.arange(last - first) / RATE
        k = np.arange(1, int(8000 // f0) + 1)
        amplitude = rng.uniform(0.5, 1.0, len(k)) / k
        phase = rng.uniform(0, 6.3, len(k))[:, None]
        tone = (amplitude[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phase)).sum(0)
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(0.5, 3.0))
        audio[first:last] += rng.uniform(0.2, 0.5) * tone * envelope / amplitude.sum() * 2
        roll[int(np.ceil(start * RATE / HOP)):min(FRAMES, int((start + length) * RATE / HOP)), midi - LOWEST] = 1
        start += length + rng.uniform(0.0, 0.2)
    return audio.astype(np.float32), roll


def basicpitch_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n windows of melody audio [n, 43844, 1] and their piano rolls `notes` [n, 172, 88]."""
    rng = np.random.default_rng(seed)
    audio, rolls = zip(*(_window(rng) for _ in range(n)))
    return {INPUT: np.stack(audio)[:, :, None], "notes": np.stack(rolls)}


def basicpitch_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`note`, `onset` [n, 172, 88] and `contour` [n, 172, 264] activations."""
    from onnxjpq.runtime.sessions import session

    sess = session(model)
    names = list(OUTPUTS)
    parts = [sess.run([OUTPUTS[k] for k in names], {INPUT: data[INPUT][i:i + 8]})
             for i in range(0, len(data[INPUT]), 8)]
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(names)}


def _f1(found: np.ndarray, wanted: np.ndarray) -> float:
    return float(2 * (found & wanted).sum() / max(1, found.sum() + wanted.sum()))


def basicpitch_truth(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Frame-level note F1, precision and recall against the piano roll; and how often the
    strongest key of a sounding frame is the one played."""
    found, wanted = outputs["note"] > FRAME_THRESHOLD, data["notes"].astype(bool)
    hits = (found & wanted).sum()
    sounding = wanted.any(-1)
    return {"note_f1": _f1(found, wanted), "precision": float(hits / max(1, found.sum())),
            "recall": float(hits / max(1, wanted.sum())),
            "key_accuracy": float(np.mean(outputs["note"].argmax(-1)[sounding] == wanted.argmax(-1)[sounding]))}


def basicpitch_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                      data: dict[str, np.ndarray]) -> dict[str, float]:
    """Note and onset F1 of the candidate against the reference, its note F1 against the piano
    roll, and the largest change of a note activation."""
    return {"note_f1": _f1(candidate["note"] > FRAME_THRESHOLD, reference["note"] > FRAME_THRESHOLD),
            "onset_f1": _f1(candidate["onset"] > ONSET_THRESHOLD, reference["onset"] > ONSET_THRESHOLD),
            "truth_note_f1": basicpitch_truth(candidate, data)["note_f1"],
            "max_abs_diff": float(np.abs(reference["note"] - candidate["note"]).max())}
