"""core.clipping: the least-MSE clipping range of a uint8 activation quantizer."""

import numpy as np
from hypothesis import given, settings, strategies as st

from onnxjpq.core.clipping import clipping_mse, mse_range


def _quantized_mse(x: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / (levels - 1)
    zero = np.round(-lo / step)
    q = (np.clip(np.round(x / step) + zero, 0, levels - 1) - zero) * step
    return float(np.mean((x - q) ** 2))


def _histogram(x: np.ndarray, bins: int = 2048):
    counts, edges = np.histogram(x, bins, (float(x.min()), float(x.max())))
    return counts, edges, (edges[:-1] + edges[1:]) / 2


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), shift=st.floats(-1.0, 1.0),
       heavy=st.booleans())
def test_the_chosen_range_costs_no_more_than_min_max_and_its_cost_is_what_quantization_measures(seed, scale, shift,
                                                                                               heavy):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(2, 20000) if heavy else rng.laplace(size=20000)) * scale + shift * scale
    counts, edges, centers = _histogram(x)
    lo, hi = mse_range(counts, edges)
    assert min(edges[0], 0) <= lo <= 0 <= hi <= max(edges[-1], 0)
    chosen = float(clipping_mse(counts, centers, np.asarray(lo), np.asarray(hi))[()])
    full = float(clipping_mse(counts, centers, np.asarray(edges[0]), np.asarray(edges[-1]))[()])
    assert chosen <= full * (1 + 1e-12)
    if not heavy:  # where the step is small against the spread, the model of the error (uniform rounding
        # inside, distance to the end outside) is what rounding measures
        assert abs(_quantized_mse(x, lo, hi) / chosen - 1) < 0.25


def test_heavy_tails_are_clipped_and_a_uniform_range_is_kept():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(3, 200000)  # 8 bits clip mildly: Banner et al.'s optimum is ~10 b for a Laplace(b)
    counts, edges, _ = _histogram(heavy)
    lo, hi = mse_range(counts, edges)
    assert hi < 0.8 * edges[-1] and lo > 0.8 * edges[0]
    assert _quantized_mse(heavy, lo, hi) < 0.8 * _quantized_mse(heavy, edges[0], edges[-1])
    flat = rng.uniform(0, 1, 100000)
    counts, edges, _ = _histogram(flat)
    assert mse_range(counts, edges)[1] >= 0.98 * edges[-1]


def test_an_empty_or_constant_histogram_keeps_its_range():
    assert mse_range(np.zeros(4), np.array([0.0, 1, 2, 3, 4])) == (0.0, 4.0)
    assert mse_range(np.array([5.0]), np.array([0.0, 0.0])) == (0.0, 0.0)
