"""Bias correction: the mean output error per channel on the calibration data becomes zero."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxjpq.core.hessian import ConvGeometry, conv_stats, matmul_stats
from onnxjpq.methods.bias_correction import bias_shift, correct_bias


def rounded(w: np.ndarray, step: float) -> np.ndarray:
    return np.round(w / step) * step


def direct_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Conv by loops over output positions and kernel offsets (N-D, grouped, strided, padded, dilated)."""
    r, g = geo.rank, geo.groups
    padded = np.pad(x, [(0, 0), (0, 0)] + [(geo.pads[i], geo.pads[i + r]) for i in range(r)])
    out = geo.output_shape(x.shape[2:])
    o_g, c_g = w.shape[0] // g, x.shape[1] // g
    y = np.zeros((x.shape[0], w.shape[0]) + out) + b.reshape((1, -1) + (1,) * r)
    for pos in itertools.product(*(range(o) for o in out)):
        for k in itertools.product(*(range(kk) for kk in geo.kernel_shape)):
            at = tuple(pos[i] * geo.strides[i] + k[i] * geo.dilations[i] for i in range(r))
            for gi in range(g):
                xs = padded[(slice(None), slice(gi * c_g, (gi + 1) * c_g)) + at]  # [N, C/g]
                ws = w[(slice(gi * o_g, (gi + 1) * o_g), slice(None)) + k]  # [O/g, C/g]
                y[(slice(None), slice(gi * o_g, (gi + 1) * o_g)) + pos] += xs @ ws.T
    return y


def test_matmul_mean_output_error_becomes_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 25, 12)) + rng.normal(size=12)  # batch and sequence dims, offset inputs
    w, b = rng.normal(size=(6, 12)), rng.normal(size=6)
    w_hat = rounded(w, 0.4)
    fixed = correct_bias(w, w_hat, matmul_stats(x).mean[0], b)
    error = (x @ w_hat.T + fixed.bias) - (x @ w.T + b)
    assert np.abs(error.mean(axis=(0, 1))).max() < 1e-5  # float32 bias
    assert np.abs(((x @ w_hat.T + b) - (x @ w.T + b)).mean(axis=(0, 1))).max() > 0.1
    assert not fixed.created and fixed.bias.dtype == np.float32


CONVS = [
    ((2, 4, 9, 8), 6, ConvGeometry((3, 2), strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2), groups=2)),
    ((3, 5, 11), 5, ConvGeometry((3,), strides=(2,), pads=(2, 1), groups=5)),  # depthwise 1-D
    ((2, 3, 6, 6), 6, ConvGeometry((3, 3), pads=(1, 1, 1, 1), groups=3)),  # depthwise, multiplier 2
]


@pytest.mark.parametrize("shape, out_channels, geo", CONVS)
def test_conv_mean_output_error_per_channel_becomes_zero(shape, out_channels, geo):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape) + 0.7
    w = rng.normal(size=(out_channels, shape[1] // geo.groups) + geo.kernel_shape)
    w_hat = rounded(w, 0.5)
    stats = conv_stats(x, geo)
    fixed = correct_bias(w, w_hat, stats.mean)
    assert fixed.created
    spatial = tuple(range(2, 2 + geo.rank))
    zero = np.zeros(out_channels)
    error = direct_conv(x, w_hat, fixed.bias.astype(np.float64), geo) - direct_conv(x, w, zero, geo)
    assert np.abs(error.mean(axis=(0,) + spatial)).max() < 1e-5
    np.testing.assert_allclose(fixed.shift, -((w_hat - w).reshape(out_channels, -1)
                                              * stats.mean[np.arange(out_channels) // (out_channels // geo.groups)]
                                              ).sum(axis=1), rtol=1e-12)


def test_sequential_capture_targets_the_float_outputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8)) + 1.0
    x_hat = x + 0.1 * rng.normal(size=x.shape) + 0.05  # inputs from the compressed earlier layers
    w, b = rng.normal(size=(4, 8)), rng.normal(size=4)
    w_hat = rounded(w, 0.3)
    fixed = correct_bias(w, w_hat, matmul_stats(x_hat).mean[0], b, mean_target=matmul_stats(x).mean[0])
    error = (x_hat @ w_hat.T + fixed.bias) - (x @ w.T + b)
    assert np.abs(error.mean(axis=0)).max() < 1e-5


def test_unchanged_weights_need_no_shift():
    w = np.random.default_rng(3).normal(size=(3, 5))
    np.testing.assert_array_equal(bias_shift(w, w, np.ones(5)), np.zeros(3))


def test_mismatched_means_are_refused():
    with pytest.raises(ValueError):
        bias_shift(np.zeros((4, 6)), np.zeros((4, 6)), np.zeros(5))
    with pytest.raises(ValueError):
        bias_shift(np.zeros((4, 6)), np.zeros((4, 6)), np.zeros((3, 6)))
