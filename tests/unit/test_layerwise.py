"""methods.layerwise: the per-layer dispatch, the fp32 target, the option estimates."""

from __future__ import annotations

import numpy as np
import pytest

from onnxjpq.core.hessian import output_error
from onnxjpq.methods.layerwise import (LayerHessians, LayerOption, choose_target_damp, estimate_options, fp32_error,
                                       fp32_target, grouped, relative, row_sparsities, solve_layer)


def correlated(cols: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) * 0.5 + np.eye(cols)
    return mix @ rng.standard_normal((cols, n))


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_gptq_beats_rtn_on_correlated_inputs(sparsity):
    x = correlated(48, 2000)
    w = np.random.default_rng(1).laplace(0, 0.1, (24, 48))
    data = grouped((x @ x.T)[None], 24, x.shape[1])
    option = LayerOption(7, sparsity)
    gptq, rtn = solve_layer(w, data, option, "gptq"), solve_layer(w, data, option, "rtn")
    assert gptq.error < (0.99 if sparsity else 0.6) * rtn.error
    if sparsity:
        assert (gptq.codes == 0).mean() == pytest.approx((rtn.codes == 0).mean(), abs=0.02)  # same sparsity


def test_groups_are_solved_with_their_own_hessians():
    """Two groups with different inputs: the joint solve equals the solves of each group alone."""
    xs = [correlated(20, 500, seed) for seed in (2, 3)]
    w = np.random.default_rng(4).laplace(0, 0.1, (8, 20))
    data = LayerHessians(np.stack([x @ x.T for x in xs]), np.repeat([0, 1], 4), 500)
    joint = solve_layer(w, data, LayerOption(7), "gptq")
    for g, x in enumerate(xs):
        alone = solve_layer(w[4 * g:4 * g + 4], grouped((x @ x.T)[None], 4, 500), LayerOption(7), "gptq")
        np.testing.assert_array_equal(joint.codes[4 * g:4 * g + 4], alone.codes)
    expected = sum(output_error(w[4 * g:4 * g + 4] - joint.dequantized[4 * g:4 * g + 4], x @ x.T)
                   for g, x in enumerate(xs))
    assert joint.error == pytest.approx(expected)


def test_small_layers_are_rounded_not_compensated():
    x = correlated(9, 400)
    w = np.random.default_rng(5).laplace(0, 0.3, (16, 9))
    solved = solve_layer(w, grouped((x @ x.T)[None], 16, 400), LayerOption(7), "gptq")
    assert solved.method in ("mse-grid", "adaround")


def test_without_data_the_solve_is_data_free_round_to_nearest():
    w = np.random.default_rng(6).laplace(0, 0.1, (10, 30))
    solved = solve_layer(w, None, LayerOption(7, 0.5))
    assert solved.method == "rtn-data-free"
    assert (solved.codes == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_row_sparsities_follow_the_layers_magnitude_mask():
    w = np.array([[1.0, 0.1, 0.2, 0.3], [1.0, 2.0, 3.0, 0.05]])
    assert row_sparsities(w, 0.5).tolist() == [0.75, 0.25]


def test_fp32_target_is_the_weight_when_the_inputs_are_unchanged():
    x = correlated(12, 300)
    h = (x @ x.T)[None]
    w = np.random.default_rng(7).standard_normal((5, 12))
    np.testing.assert_allclose(fp32_target(w, grouped(h, 5), h), w)


def test_fp32_target_undoes_a_scaled_input():
    """Inputs halved by the compressed earlier layers: the target doubles the weight (λ → 0)."""
    x = correlated(12, 300)
    hat = 0.5 * x
    w = np.random.default_rng(8).standard_normal((5, 12))
    target = fp32_target(w, grouped((hat @ hat.T)[None], 5), (x @ hat.T)[None], damp=1e-9)
    np.testing.assert_allclose(target, 2 * w, rtol=1e-5, atol=1e-6)
    error, energy = fp32_error(w, target, (x @ x.T)[None], (x @ hat.T)[None], grouped((hat @ hat.T)[None], 5))
    assert error <= 1e-8 * energy


def test_the_target_ridge_chosen_on_held_out_samples_generalises():
    """Fewer samples than inputs and noisy compressed inputs: the ridge the check picks gives a
    target that reproduces the fp32 outputs on fresh samples better than the weakest ridge."""
    w = np.random.default_rng(9).standard_normal((4, 40))

    def sample(n, seed):
        x = correlated(40, n, seed)
        hat = x + 0.2 * np.random.default_rng(seed + 1).standard_normal(x.shape)
        return grouped((hat @ hat.T)[None], 4), (x @ hat.T)[None], (x @ x.T)[None]

    fit, fit_cross, _ = sample(30, 10)
    check, check_cross, check_fp32 = sample(30, 20)
    fresh, fresh_cross, fresh_fp32 = sample(3000, 30)
    damp = choose_target_damp(w, fit, fit_cross, check, check_fp32, check_cross)
    assert damp > 0.01

    def fresh_error(d):
        return fp32_error(w, fp32_target(w, fit, fit_cross, d), fresh_fp32, fresh_cross, fresh)[0]

    assert fresh_error(damp) < fresh_error(0.01)


def test_estimates_rank_bits_and_track_the_exact_solve():
    x = correlated(64, 3000)
    w = np.random.default_rng(11).laplace(0, 0.1, (48, 64))
    data = grouped((x @ x.T)[None], 48, 3000)
    options = [LayerOption(m) for m in (1, 3, 7, 15)]
    estimates = estimate_options(w, data, options)
    assert (np.diff(estimates.errors) < 0).all()
    exact = np.array([relative(solve_layer(w, data, o))[0] for o in options])
    assert np.all(np.abs(np.log(estimates.errors / exact)) < np.log(3))  # within a factor 3
    assert estimates.anchor(1) and estimates.errors[1] == pytest.approx(
        relative(solve_layer(w[estimates_rows(48)], data.subset(estimates_rows(48)), options[1]))[0])


def estimates_rows(rows: int) -> np.ndarray:
    return np.unique(np.linspace(0, rows - 1, min(rows, 64)).round().astype(int))
