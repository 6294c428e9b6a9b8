"""Signal processing for audio front ends: DFT, STFT, the Hann, Hamming and Blackman windows, MelWeightMatrix.

Complex tensors are ONNX's real layout, a trailing axis of 1 (real) or 2 (real,
imaginary); transforms run in torch.fft, so gradients flow through them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import axis as norm_axis
from .dtypes import TORCH_DTYPES
from .registry import register


def _complex(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0] if x.shape[-1] == 1 else torch.complex(x[..., 0], x[..., 1])


def _real_layout(y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y.real, y.imag], -1) if y.is_complex() else y.unsqueeze(-1)


def dft(x: torch.Tensor, length: int | None, a: int, inverse: bool, onesided: bool) -> torch.Tensor:
    """ONNX DFT of x along axis a (of x without its trailing real/imaginary axis)."""
    signal = _complex(x)
    if length is None:
        length = 2 * (signal.shape[a] - 1) if inverse and onesided else signal.shape[a]
    if inverse:
        y = torch.fft.irfft(signal, n=length, dim=a) if onesided else torch.fft.ifft(signal, n=length, dim=a)
    else:
        y = torch.fft.fft(signal, n=length, dim=a)
        y = y.narrow(a, 0, length // 2 + 1) if onesided else y
    return _real_layout(y).to(x.dtype)


@register("DFT")
def dft_op(node, x, length=None, axis_input=None):
    a = node.attr("axis", 1) if node.opset < 20 else (int(axis_input.item()) if axis_input is not None else -2)
    return [dft(x, int(length.item()) if length is not None else None, norm_axis(a, x.dim()),
                bool(node.attr("inverse", 0)), bool(node.attr("onesided", 0)))]


@register("STFT")
def stft(node, signal, step, window=None, frame_length=None):
    length = int(frame_length.item()) if frame_length is not None else (
        window.shape[0] if window is not None else signal.shape[-2])
    frames = signal.unfold(1, length, int(step.item())).transpose(-1, -2)  # [batch, frames, length, 1|2]
    if window is not None:
        frames = frames * window.reshape(-1, 1)
    return [dft(frames, length, 2, False, bool(node.attr("onesided", 1)))]


def _window(terms: list[float]):
    """A generalized cosine window sum_k terms[k] cos(2 pi k n / N), N = size (periodic) or size - 1."""
    def run(node, size):
        n = int(size.item())
        span = n if node.attr("periodic", 1) else n - 1
        i = torch.arange(n, dtype=torch.float64)
        w = sum(c * torch.cos(2 * math.pi * k * i / span) for k, c in enumerate(terms))
        return [w.to(TORCH_DTYPES[node.attr("output_datatype", 1)])]
    return run


register("HannWindow")(_window([0.5, -0.5]))
register("HammingWindow")(_window([25 / 46, -21 / 46]))
register("BlackmanWindow")(_window([0.42, -0.5, 0.08]))


@register("MelWeightMatrix")
def mel_weight_matrix(node, n_mel, dft_length, rate, low, high):
    """Triangular mel filters [dft_length // 2 + 1, n_mel], on the bins onnx's reference rounds them to."""
    mel, length, sample_rate = int(n_mel.item()), int(dft_length.item()), int(rate.item())
    lo_mel, hi_mel = (2595 * np.log1p(float(v.item()) / 700) / np.log(10) for v in (low, high))
    points = np.arange(mel + 2) * (hi_mel - lo_mel) / (mel + 2) + lo_mel
    bins = (((length + 1) * (700 * np.expm1(points / 2595 * np.log(10)))) // sample_rate).astype(int)
    out = np.zeros((length // 2 + 1, mel))
    for i in range(mel):
        left, centre, right = bins[i], bins[i + 1], bins[i + 2]
        if centre == left:
            out[centre, i] = 1
        else:
            out[left:centre + 1, i] = (np.arange(left, centre + 1) - left) / (centre - left)
        if right > centre:
            out[centre:right, i] = (right - np.arange(centre, right)) / (right - centre)
    return [torch.from_numpy(out).to(TORCH_DTYPES[node.attr("output_datatype", 1)])]
