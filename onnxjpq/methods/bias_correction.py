"""Bias correction of the mean output error (DFQ; METHODS.md §7e).

A layer computes y = W x + b per output channel o. Compressed, it computes
ŷ = Ŵ x̂ + b̂, where x̂ is x, or in sequential capture (§7f) the input the
already compressed earlier layers give. Over the calibration columns, with
μ = E[x] and μ̂ = E[x̂],

    E[ŷ − y]_o = (Ŵ μ̂)_o − (W μ)_o + b̂_o − b_o,

so b̂ = b + W μ − Ŵ μ̂ makes the mean output error of every channel zero; with
x̂ = x that is Δb = −(Ŵ − W) μ. For a Conv the columns are im2col's (one mean per
group, onnxjpq.core.hessian.InputStats.mean); zero padding is part of them, so
the mean is over all output positions and the correction is exact there too.
A layer without a bias gets one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BiasCorrection:
    """The corrected bias (float32 [out]), the shift Δb added (float64) and whether the bias is new."""

    bias: np.ndarray
    shift: np.ndarray
    created: bool


def bias_shift(weight: np.ndarray, weight_hat: np.ndarray, mean_in: np.ndarray,
               mean_target: np.ndarray | None = None) -> np.ndarray:
    """Δb = W μ_target − Ŵ μ_in per output channel (μ_target defaults to μ_in).

    `weight` is [out, cols] or a Conv weight [out, C/g, *kernel] (flattened to
    [out, C/g·prod(kernel)], im2col's row order); the means are [cols] or
    [groups, cols], output channel o in group o // (out / groups).

    >>> bias_shift(np.array([[1.0, 2.0]]), np.array([[1.5, 2.0]]), np.array([2.0, -1.0])).tolist()
    [-1.0]
    """
    w = np.asarray(weight, np.float64).reshape(len(weight), -1)
    w_hat = np.asarray(weight_hat, np.float64).reshape(w.shape)
    mean = np.atleast_2d(np.asarray(mean_in, np.float64))
    target = mean if mean_target is None else np.atleast_2d(np.asarray(mean_target, np.float64))
    groups = mean.shape[0]
    if target.shape != mean.shape or mean.shape[1] != w.shape[1] or w.shape[0] % groups:
        raise ValueError(f"weight {np.shape(weight)} does not fit input means {mean.shape} / {target.shape}")
    group = np.arange(w.shape[0]) // (w.shape[0] // groups)
    return np.einsum("oc,oc->o", w, target[group]) - np.einsum("oc,oc->o", w_hat, mean[group])


def correct_bias(weight: np.ndarray, weight_hat: np.ndarray, mean_in: np.ndarray, bias: np.ndarray | None = None,
                 mean_target: np.ndarray | None = None) -> BiasCorrection:
    """The bias b + Δb that zeroes each channel's mean output error (a new one when `bias` is None).

    >>> c = correct_bias(np.array([[1.0, 2.0]]), np.array([[1.5, 2.0]]), np.array([2.0, -1.0]))
    >>> c.bias.tolist(), c.created
    ([-1.0], True)
    """
    shift = bias_shift(weight, weight_hat, mean_in, mean_target)
    base = np.zeros(shift.shape) if bias is None else np.asarray(bias, np.float64).reshape(shift.shape)
    return BiasCorrection((base + shift).astype(np.float32), shift, bias is None)
