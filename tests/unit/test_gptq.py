"""GPTQ / SparseGPT: RTN and magnitude pruning at H = I, lower output error on correlated inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq.core.hessian import matmul_stats, output_error
from onnxjpq.methods.gptq import (GptqConfig, inverse_cholesky_upper, max_code_for_bits, row_magnitude_keep,
                                  rtn_codes, solve_gptq)


def correlated_layer(rows: int, cols: int, seed: int, rank: int | None = None, samples: int = 2000):
    """W (Laplace) and H = XXᵀ of inputs with a random low-rank plus noise covariance."""
    rng = np.random.default_rng(seed)
    rank = rank or max(1, cols // 4)
    basis = rng.normal(size=(rank, cols))
    x = rng.normal(size=(samples, rank)) @ basis + 0.5 * rng.normal(size=(samples, cols))
    x *= rng.uniform(0.2, 2.0, size=cols)  # uneven input scales
    return rng.laplace(size=(rows, cols)) * 0.1, matmul_stats(x).hessian()


def block_magnitude_keep(w: np.ndarray, sparsity: float, block: int) -> np.ndarray:
    """Per row and column block, prune the round(p·i2) − round(p·i1) smallest |w| (stable)."""
    keep = np.ones(w.shape, bool)
    count = lambda c: int(np.floor(sparsity * c + 0.5))
    for i1 in range(0, w.shape[1], block):
        i2 = min(i1 + block, w.shape[1])
        order = np.argsort(np.abs(w[:, i1:i2]), axis=1, kind="stable")[:, :count(i2) - count(i1)]
        for r in range(w.shape[0]):
            keep[r, i1 + order[r]] = False
    return keep


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 40), bits=st.integers(2, 8), per_channel=st.booleans(),
       act_order=st.booleans(), block=st.integers(1, 20), seed=st.integers(0, 2 ** 16))
def test_identity_hessian_is_round_to_nearest_on_the_same_grid(rows, cols, bits, per_channel, act_order, block, seed):
    w = np.random.default_rng(seed).laplace(size=(rows, cols))
    config = GptqConfig(bits=bits, per_channel=per_channel, act_order=act_order, block_size=block)
    result = solve_gptq(w, np.eye(cols), config)
    m = max_code_for_bits(bits)
    np.testing.assert_array_equal(result.codes, rtn_codes(w, result.steps.astype(np.float64), m))
    assert result.error == result.error_rtn
    assert result.codes.dtype == np.int32 and np.abs(result.codes).max() <= m
    if not per_channel:
        assert np.all(result.steps == result.steps[0])


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(2, 40), sparsity=st.floats(0.05, 0.95), bits=st.integers(2, 6),
       block=st.integers(1, 24), seed=st.integers(0, 2 ** 16))
def test_identity_hessian_prunes_by_magnitude_and_stores_the_sparsity_asked(rows, cols, sparsity, bits, block, seed):
    w = np.random.default_rng(seed).laplace(size=(rows, cols))
    result = solve_gptq(w, np.eye(cols), GptqConfig(bits=bits, sparsity=sparsity, block_size=block))
    keep = block_magnitude_keep(w, sparsity, block)
    expected = rtn_codes(w, result.steps.astype(np.float64), max_code_for_bits(bits), keep, keep_survivors=True)
    np.testing.assert_array_equal(result.codes, expected)
    np.testing.assert_array_equal(result.codes != 0, keep)  # survivors never round to 0
    assert np.all((result.codes == 0).sum(axis=1) == int(np.floor(sparsity * cols + 0.5)))


def test_one_block_prunes_each_row_by_magnitude():
    w = np.random.default_rng(0).laplace(size=(6, 50))
    result = solve_gptq(w, np.eye(50), GptqConfig(sparsity=0.6, block_size=128))
    np.testing.assert_array_equal(result.codes != 0, row_magnitude_keep(w, 0.6))
    assert result.error == result.error_rtn


def test_diagonal_hessian_with_act_order_permutes_back():
    rng = np.random.default_rng(1)
    w, d = rng.laplace(size=(5, 30)), rng.uniform(0.1, 10, size=30)
    result = solve_gptq(w, np.diag(d), GptqConfig(bits=3, act_order=True, block_size=7))
    np.testing.assert_array_equal(result.codes, rtn_codes(w, result.steps.astype(np.float64), 3))


@pytest.mark.parametrize("bits, act_order, per_channel", [(4, False, True), (3, False, True), (4, True, True),
                                                          (3, True, False), (2, False, True)])
def test_lower_output_error_than_rtn_on_correlated_inputs(bits, act_order, per_channel):
    w, h = correlated_layer(32, 96, seed=bits)
    result = solve_gptq(w, h, GptqConfig(bits=bits, act_order=act_order, per_channel=per_channel, block_size=32))
    assert result.error < 0.7 * result.error_rtn
    plain = rtn_codes(w, np.abs(w).max(axis=1) / max_code_for_bits(bits), max_code_for_bits(bits))
    assert result.error < output_error(w - plain * (np.abs(w).max(axis=1) / max_code_for_bits(bits))[:, None], h)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_joint_pruning_beats_magnitude_pruning_plus_rtn(bits):
    w, h = correlated_layer(32, 96, seed=10 + bits)
    result = solve_gptq(w, h, GptqConfig(bits=bits, sparsity=0.5, block_size=32))
    assert result.method == "sparsegpt"
    assert result.error < 0.7 * result.error_rtn
    assert np.all((result.codes == 0).sum(axis=1) == 48)


def test_errors_are_the_output_errors_of_the_stored_values():
    w, h = correlated_layer(8, 40, seed=3)
    result = solve_gptq(w, h, GptqConfig(bits=4, sparsity=0.3))
    np.testing.assert_array_equal(result.dequantized, (result.codes * result.steps[:, None]).astype(np.float32))
    assert result.dequantized.dtype == np.float32 and result.steps.dtype == np.float32
    assert result.error == pytest.approx(output_error(w - result.dequantized, h), rel=1e-12)
    assert result.energy == pytest.approx(np.trace(w @ h @ w.T), rel=1e-12)
    assert 0 < result.relative_error < 1
    assert result.sparsity == pytest.approx((result.codes == 0).mean())


def test_dead_inputs_are_zeroed_and_cost_nothing():
    w, h = correlated_layer(6, 24, seed=4)
    dead = [3, 10, 11]
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    result = solve_gptq(w, h, GptqConfig(bits=3))
    assert np.all(result.codes[:, dead] == 0) and np.isfinite(result.error)
    assert result.error < result.error_rtn


def test_large_layer_is_deterministic_bit_for_bit():
    w, h = correlated_layer(24, 600, seed=5, samples=1500)  # wide: float32 candidate scoring
    config = GptqConfig(bits=4, sparsity=0.25, act_order=True)
    a, b = solve_gptq(w, h, config), solve_gptq(w.copy(), h.copy(), config)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.steps, b.steps)
    assert a.error == b.error and a.error < a.error_rtn


def test_max_code_overrides_bits():
    w, h = correlated_layer(4, 20, seed=6)
    result = solve_gptq(w, h, GptqConfig(max_code=5))
    assert result.max_code == 5 and np.abs(result.codes).max() <= 5


def test_inverse_cholesky_is_upper_and_factors_the_inverse():
    _, h = correlated_layer(1, 30, seed=7)
    u = inverse_cholesky_upper(h)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h), rtol=1e-8, atol=1e-12)
    assert np.all(np.tril(u, -1) == 0) and np.all(np.diag(u) > 0)
    singular = np.ones((3, 3))  # rank 1: damped until it factors
    assert np.all(np.isfinite(inverse_cholesky_upper(singular)))


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(max_code=0), dict(sparsity=1.0), dict(block_size=0),
                                    dict(damp=0.0), dict(clip_ratios=(1.2,)), dict(clip_refine=(0.0,))])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GptqConfig(**kwargs)


def test_mismatched_hessian_is_refused():
    with pytest.raises(ValueError):
        solve_gptq(np.zeros((2, 3)), np.eye(4))


def test_sweeping_refined_grids_lowers_the_error():
    w, h = correlated_layer(32, 96, seed=8)
    for sparsity in (0.0, 0.5):
        plain = solve_gptq(w, h, GptqConfig(bits=3, sparsity=sparsity, clip_refine=()))
        refined = solve_gptq(w, h, GptqConfig(bits=3, sparsity=sparsity))
        assert refined.error < plain.error
        assert np.all(refined.steps <= np.float32(np.abs(w).max(axis=1) / 3) * (1 + 1e-6))


def test_grids_swept_in_bounded_chunks_give_the_same_solve(monkeypatch):
    w, h = correlated_layer(16, 64, seed=9)
    config = GptqConfig(bits=4, sparsity=0.3, act_order=True)
    whole = solve_gptq(w, h, config)
    monkeypatch.setattr("onnxjpq.methods.gptq._SWEEP_ELEMENTS", 1)  # one grid at a time
    chunked = solve_gptq(w, h, config)
    np.testing.assert_array_equal(chunked.steps, whole.steps)
    assert chunked.error == pytest.approx(whole.error, rel=1e-9)
    assert (chunked.codes != whole.codes).mean() < 0.01


def test_solver_modules_import_only_numpy_scipy_and_the_core():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "onnxjpq"
    allowed = ("numpy", "scipy", "onnxjpq.core", "onnxjpq.methods.gptq", "__future__", "dataclasses", "math", "typing")
    for name in ("core/hessian.py", "methods/gptq.py", "methods/rounding.py", "methods/bias_correction.py"):
        tree = ast.parse((root / name).read_text())
        found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert all(m.startswith(allowed) for m in found), (name, found)
