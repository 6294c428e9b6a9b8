"""MSE grid and AdaRound: never worse than RTN in output error, deterministic, rows independent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq.core.hessian import ConvGeometry, conv_stats, matmul_stats
from onnxjpq.methods.gptq import CLIP_RATIOS, max_code_for_bits, rtn_codes, stored_error
from onnxjpq.methods.rounding import RoundingConfig, quantize_mse_grid, solve_adaround, solve_rounding


def depthwise_layer(channels: int = 24, seed: int = 0):
    """A 3x3 depthwise weight [C, 9] and its per-channel Hessians [C, 9, 9] from smooth, offset images."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, channels, 12, 12))
    for _ in range(2):  # spatially correlated inputs
        x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(x, -1, 2) + np.roll(x, -1, 3)) / 5
    x += 0.2 * rng.normal(size=x.shape) + rng.uniform(0, 0.5, size=(1, channels, 1, 1))
    hessians = conv_stats(x, ConvGeometry((3, 3), pads=(1, 1, 1, 1), groups=channels)).row_hessians(channels)
    return rng.laplace(size=(channels, 9)) * rng.uniform(0.2, 1.0, size=(channels, 1)), hessians


def small_dense_layer(rows: int = 32, cols: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(max(1, cols // 3), cols))
    x = rng.normal(size=(1000, basis.shape[0])) @ basis + 0.5 * rng.normal(size=(1000, cols)) + rng.normal(size=cols)
    return rng.laplace(size=(rows, cols)) * 0.1, matmul_stats(x).hessian()


def full_range_rtn_error(w, hessian, bits):
    """Output error of plain RTN on the max|w| grid: the data-free baseline."""
    m = max_code_for_bits(bits)
    steps = (np.abs(w).max(axis=1) / m).astype(np.float32).astype(np.float64)
    return stored_error(w, rtn_codes(w, steps, m), steps, hessian)


LAYERS = {"depthwise": depthwise_layer, "dense": small_dense_layer}


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_grid_and_learned_rounding_beat_rtn(layer, bits):
    w, h = LAYERS[layer]()
    config = RoundingConfig(bits=bits, iterations=400)
    baseline = full_range_rtn_error(w, h, bits)
    grid, learned, best = quantize_mse_grid(w, h, config), solve_adaround(w, h, config), solve_rounding(w, h, config)
    assert grid.error <= baseline and grid.error == grid.error_rtn
    assert learned.error < 0.97 * grid.error and learned.error < 0.75 * baseline
    assert learned.error <= learned.error_rtn == grid.error
    assert best.error == min(grid.error, learned.error)
    for result in (grid, learned, best):
        assert result.codes.dtype == np.int32 and np.abs(result.codes).max() <= max_code_for_bits(bits)
        assert result.error == stored_error(w, result.codes, result.steps, h)


def test_weight_mse_grid_is_the_best_clip_ratio_of_each_row():
    w = np.random.default_rng(2).laplace(size=(16, 9))
    result = quantize_mse_grid(w, None, RoundingConfig(bits=3))
    for ratio in CLIP_RATIOS:
        steps = (ratio * np.abs(w).max(axis=1) / 3).astype(np.float32).astype(np.float64)
        delta = w - rtn_codes(w, steps, 3) * steps[:, None]
        mine = w - result.codes * result.steps.astype(np.float64)[:, None]
        assert np.all((mine ** 2).sum(axis=1) <= (delta ** 2).sum(axis=1) + 1e-12)


def test_results_are_deterministic_bit_for_bit():
    w, h = depthwise_layer(seed=3)
    a, b = solve_rounding(w, h), solve_rounding(w.copy(), h.copy())
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.steps, b.steps)
    assert a.error == b.error and a.method == b.method


def test_rows_are_solved_independently():
    w, h = depthwise_layer(channels=6, seed=4)
    config = RoundingConfig(bits=3, iterations=200)
    together = solve_adaround(w, h, config)
    for r in range(6):
        alone = solve_adaround(w[r:r + 1], h[r], config)
        np.testing.assert_array_equal(alone.codes[0], together.codes[r])
        assert alone.steps[0] == together.steps[r]


def test_one_step_for_the_layer():
    w, h = small_dense_layer(seed=5)
    result = solve_rounding(w, h, RoundingConfig(bits=4, per_channel=False, iterations=100))
    assert np.all(result.steps == result.steps[0])
    step = np.full(w.shape[0], np.float32(np.abs(w).max() / 7), np.float64)
    assert result.error < result.error_rtn <= stored_error(w, rtn_codes(w, step, 7), step, h)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 16), bits=st.integers(2, 6), per_row=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_never_worse_than_rtn_on_any_layer(rows, cols, bits, per_row, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows if per_row else 1, 3 * cols, cols)) + rng.normal(size=cols)
    h = np.einsum("gnc,gnd->gcd", x, x)
    h = h if per_row else h[0]
    w = rng.laplace(size=(rows, cols))
    config = RoundingConfig(bits=bits, iterations=60)
    baseline = full_range_rtn_error(w, h, bits)
    tolerance = 1e-12 * max(baseline, 1e-300)
    grid, learned = quantize_mse_grid(w, h, config), solve_adaround(w, h, config)
    assert grid.error <= baseline + tolerance
    assert learned.error <= grid.error + tolerance
    assert solve_rounding(w, h, config).error <= min(grid.error, learned.error)


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(max_code=0), dict(iterations=-1), dict(learning_rate=0.0),
                                    dict(warmup=1.0), dict(clip_ratios=())])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RoundingConfig(**kwargs)


def test_mismatched_hessian_is_refused():
    with pytest.raises(ValueError):
        solve_rounding(np.zeros((2, 3)), np.eye(4))
