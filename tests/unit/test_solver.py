"""Properties of the OPQ solver (onnxjpq.methods.opq) on Laplace samples.

Layers are 2-D arrays [channels, weights per channel] of Laplace(τ) samples,
τ between 1e-3 and 1e-1, 64..20000 weights each, 2..6 layers. Every layer has
16 channels or more, so that one channel changing its packed width moves the
model's average by at most a few hundredths of a bit (the solver scales all
steps by one factor, so the averages it can reach are discrete).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq import OptionError
from onnxjpq.methods.opq import (OpqConfig, channel_stats, global_magnitude_counts, int4_caps,
                                 largest_remainder_counts, magnitude_mask, opq_steps, packed_bits, solve_opq,
                                 solve_prune_threshold)
from onnxjpq.core.quant import code_width, quantize_codes, to_channels

# derandomize: the same examples on every run (a red CI run reproduces locally);
# database=None: nothing written outside tests/.
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)
BITS = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


@dataclass
class Layer:
    name: str
    values: np.ndarray
    axis: int | None = 0
    groups: int = 1


@st.composite
def laplace_layers(draw, min_layers=2, max_layers=6):
    """2..6 layers of mixed sizes and Laplace scales, from one seed."""
    n = draw(st.integers(min_layers, max_layers))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        size = draw(st.integers(64, 20000))
        channels = draw(st.integers(16, min(64, size // 4)))
        log_scale = draw(st.floats(-3.0, -1.0))
        values = rng.laplace(0.0, 10.0**log_scale, size=(channels, size // channels)).astype(np.float32)
        layers.append(Layer(f"layer{i}", values))
    return layers


def _kept_fraction(plan) -> float:
    kept = sum(int(p.mask.sum()) for p in plan.layers)
    return kept / sum(p.mask.size for p in plan.layers)


def _codes(layer: Layer, plan_layer) -> np.ndarray:
    return quantize_codes(layer.values, plan_layer.mask, plan_layer.step, plan_layer.keep_survivors,
                          plan_layer.max_code)


def _average_packed_bits(layers, plan) -> float:
    """Σ over channels of (non-zero codes × ⌈log2(2m+1)⌉) / non-zero codes, from the codes."""
    value_bits = nonzero = 0
    for layer, p in zip(layers, plan.layers):
        codes = np.abs(to_channels(_codes(layer, p), layer.axis, layer.groups))
        value_bits += int(((codes != 0).sum(axis=1) * code_width(codes.max(axis=1))).sum())
        nonzero += int((codes != 0).sum())
    return value_bits / nonzero


# ------------------------------------------------------------------------- pruning


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.95), mode=st.sampled_from(["laplace", "exact"]))
def test_global_prune_ratio_is_within_half_a_percent_of_the_target(layers, prune, mode):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=4, prune_mode=mode))
    total = sum(l.values.size for l in layers)
    assert abs((1 - _kept_fraction(plan)) - prune) <= 0.005
    assert sum(int((~p.mask).sum()) for p in plan.layers) == round(prune * total)


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.05, 0.95))
def test_laplace_mode_prunes_each_layer_at_its_predicted_ratio(layers, prune):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=4))
    for layer, p in zip(layers, plan.layers):
        pruned = int((~p.mask).sum())
        assert abs(pruned - p.predicted_prune_ratio * layer.values.size) < 1
        # the ratios come from one threshold: 1 - exp(-s/τ) with τ = mean |w|
        tau = float(np.abs(layer.values).mean(dtype=np.float64))  # as stats.laplace_scale sums
        s = plan.diagnostics["laplace_threshold"]
        assert p.predicted_prune_ratio == pytest.approx(-np.expm1(-s / tau), rel=1e-9)


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.95))
def test_masks_prune_the_smallest_magnitudes_of_each_layer(layers, prune):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=4))
    for layer, p in zip(layers, plan.layers):
        w = np.abs(layer.values)
        if p.mask.all() or not p.mask.any():
            continue
        assert w[~p.mask].max() <= w[p.mask].min()


def _brute_force_threshold(sizes, scales, target) -> float:
    """Bisection on G(s) = Σ N_i (1 - exp(-s/τ_i)) - target·N over [0, τ_max·ln(1/(1-target))]."""
    def g(s):
        return float((sizes * (1.0 - np.exp(-s / scales))).sum() - target * sizes.sum())

    lo, hi = 0.0, float(-scales.max() * np.log(1.0 - target))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


@PROPERTY
@given(layers=laplace_layers(), target=st.floats(0.001, 0.95))
def test_prune_threshold_is_the_root_of_g(layers, target):
    sizes = np.array([l.values.size for l in layers], float)
    scales = np.array([float(np.abs(l.values).mean()) for l in layers])
    s = solve_prune_threshold(sizes, scales, target)
    g = (sizes * -np.expm1(-s / scales)).sum() - target * sizes.sum()
    assert abs(g) <= 1e-9 * sizes.sum()
    assert s == pytest.approx(_brute_force_threshold(sizes, scales, target), rel=1e-9)
    assert -scales.min() * np.log1p(-target) <= s <= -scales.max() * np.log1p(-target) * (1 + 1e-12)


def test_prune_threshold_of_equal_scales_is_the_laplace_quantile():
    s = solve_prune_threshold(np.array([100, 300]), np.array([0.02, 0.02]), 0.5)
    assert s == pytest.approx(0.02 * np.log(2), rel=1e-12)


def test_prune_threshold_of_zero_target_is_zero():
    assert solve_prune_threshold(np.array([10, 20]), np.array([0.1, 0.2]), 0.0) == 0.0


def test_prune_threshold_refuses_a_target_of_one():
    with pytest.raises(OptionError):
        solve_prune_threshold(np.array([10]), np.array([0.1]), 1.0)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_largest_remainder_counts_sum_to_the_total_and_fit_the_sizes(data):
    n = data.draw(st.integers(1, 8))
    sizes = np.array(data.draw(st.lists(st.integers(0, 20000), min_size=n, max_size=n)), np.int64)
    fractions = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    raw = fractions * sizes
    total = int(round(raw.sum()))
    counts = largest_remainder_counts(fractions, sizes, total)
    assert counts.sum() == total
    assert np.all(counts >= 0) and np.all(counts <= sizes)
    assert np.all(np.abs(counts - raw) < 1)


def test_largest_remainder_counts_sum_to_a_total_below_the_floors():
    counts = largest_remainder_counts(np.array([0.5, 0.5]), np.array([10, 10]), 6)
    assert counts.sum() == 6


def test_magnitude_mask_prunes_exactly_n_and_breaks_ties_by_index():
    w = np.array([[0.3, -0.1, 0.1], [0.1, -2.0, 0.05]], np.float32)
    mask = magnitude_mask(w, 3)
    assert mask.tolist() == [[True, False, False], [True, True, False]]


def test_global_magnitude_counts_take_the_smallest_across_layers():
    counts = global_magnitude_counts([np.array([0.1, 5.0, 0.2]), np.array([0.15, 0.05])], 3)
    assert counts.tolist() == [1, 2]


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.95))
def test_exact_prune_mode_is_global_magnitude_pruning(layers, prune):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=4, prune_mode="exact"))
    mags = np.concatenate([np.abs(l.values).ravel() for l in layers])
    n_pruned = round(prune * mags.size)
    expected = np.ones(mags.size, bool)
    expected[np.argsort(mags, kind="stable")[:n_pruned]] = False
    np.testing.assert_array_equal(np.concatenate([p.mask.ravel() for p in plan.layers]), expected)


# -------------------------------------------------------------------- quantization


@PROPERTY
@given(areas=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8), n_kept=st.integers(10, 10**6),
       bits=st.floats(2.0, 8.0))
def test_opq_steps_meet_the_bin_budget_without_caps(areas, n_kept, bits):
    areas = np.array(areas)
    steps = opq_steps(areas, n_kept, bits, np.zeros_like(areas))
    assert (areas / steps).sum() == pytest.approx(2 ** (bits - 1) * n_kept, rel=1e-9)
    # the closed form: Δ_i ∝ A_i^(1/3)
    np.testing.assert_allclose(steps / np.cbrt(areas), steps[0] / np.cbrt(areas[0]), rtol=1e-9)


@PROPERTY
@given(data=st.data())
def test_opq_steps_respect_caps_and_meet_the_budget_when_some_layer_is_free(data):
    n = data.draw(st.integers(1, 8))
    areas = np.array(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n)))
    caps = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    n_kept = data.draw(st.integers(10, 10**5))
    bits = data.draw(st.floats(2.0, 8.0))
    steps = opq_steps(areas, n_kept, bits, caps)
    assert np.all(steps >= caps * (1 - 1e-12))
    free = steps > caps * (1 + 1e-9)
    if free.any():
        assert (areas / steps).sum() == pytest.approx(2 ** (bits - 1) * n_kept, rel=1e-9)
        ratio = steps[free] / np.cbrt(areas[free])
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
        # a capped layer is one whose unconstrained step would be finer than its cap
        assert np.all(ratio[0] * np.cbrt(areas[~free]) <= caps[~free] * (1 + 1e-9))


def test_opq_steps_give_step_zero_to_layers_with_no_area():
    steps = opq_steps(np.array([0.0, 8.0]), 100, 4.0, np.zeros(2))
    assert steps[0] == 0 and steps[1] > 0


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.9), bits=st.sampled_from(BITS),
       fit_int4=st.booleans())
def test_solver_packed_bits_meet_the_budget(layers, prune, bits, fit_int4):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=bits, fit_int4=fit_int4))
    stats = channel_stats(layers, [p.mask for p in plan.layers])
    survivors = np.array([p.keep_survivors for p in plan.layers])
    solver_bits = packed_bits(stats, np.array([p.step for p in plan.layers]), survivors)
    assert solver_bits == pytest.approx(bits, abs=0.05)
    assert plan.diagnostics["bits_target_met"]


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.05, 0.9), bits=st.sampled_from(BITS),
       fit_int4=st.booleans())
def test_average_packed_bits_of_the_codes_meet_the_budget(layers, prune, bits, fit_int4):
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=bits, fit_int4=fit_int4))
    assert _average_packed_bits(layers, plan) == pytest.approx(bits, abs=0.05)
    assert plan.diagnostics["bits_target_met"]


@PROPERTY
@given(layers=laplace_layers(), bits=st.sampled_from(BITS), fit_int4=st.booleans())
def test_average_packed_bits_of_the_codes_meet_the_budget_without_pruning(layers, bits, fit_int4):
    plan = solve_opq(layers, OpqConfig(prune=0.0, bits=bits, fit_int4=fit_int4))
    assert _average_packed_bits(layers, plan) == pytest.approx(bits, abs=0.05)


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.9), bits=st.sampled_from((2.5, 3.0, 3.5, 4.0)))
def test_fit_int4_moves_only_the_smallest_layers_out_of_int4(layers, prune, bits):
    # int4_caps caps every layer's step at max|w|/7 (codes within ±7), then moves the
    # smallest layers to the int8 cap until the bit budget is reachable.
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=bits, fit_int4=True))
    stats = channel_stats(layers, [p.mask for p in plan.layers])
    sizes = np.array([l.values.size for l in layers])
    layer_max = np.array([stats.alpha[stats.layer == i].max(initial=0.0) for i in range(len(layers))])
    solved = layer_max > 0
    caps = int4_caps(stats, layer_max, sizes, solved, bits, True)
    moved = solved & np.isclose(caps, layer_max / 127, rtol=1e-12)
    in_size_order = [bool(moved[i]) for i in np.argsort(sizes, kind="stable") if solved[i]]
    assert in_size_order == sorted(in_size_order, reverse=True)
    if not moved[solved].all():
        assert packed_bits(stats, caps, True) >= bits
    for layer, p, m in zip(layers, plan.layers, moved):
        if not m:
            assert np.abs(_codes(layer, p)).max(initial=0) <= 7


def test_fit_int4_keeps_a_large_model_in_int4_at_three_bits():
    rng = np.random.default_rng(5)
    layers = [Layer(f"l{i}", rng.laplace(0, 0.05, size=(64, 256)).astype(np.float32)) for i in range(3)]
    plan = solve_opq(layers, OpqConfig(prune=0.5, bits=3, fit_int4=True))
    assert max(int(np.abs(_codes(l, p)).max()) for l, p in zip(layers, plan.layers)) <= 7
    assert _average_packed_bits(layers, plan) == pytest.approx(3, abs=0.05)


def _tiny_layers():
    rng = np.random.default_rng(1)
    return [Layer("a", rng.laplace(0, 0.05, (16, 24)).astype(np.float32)),
            Layer("b", rng.laplace(0, 0.02, (16, 8)).astype(np.float32))]


def _solver_packed_bits(layers, plan) -> float:
    stats = channel_stats(layers, [p.mask for p in plan.layers])
    return packed_bits(stats, np.array([p.step for p in plan.layers]),
                       np.array([p.keep_survivors for p in plan.layers]))


@pytest.mark.parametrize("bits", [3.0, 3.5, 4.0])
def test_codes_have_the_packed_bits_the_solver_computed(bits):
    # The calibrated step sits on a channel's rounding boundary (max|w|/step = k + 1/2 to
    # within one ulp): the codes must be computed in the solver's float64 arithmetic, not
    # in float32, or that channel's width differs by one bit (a regression test).
    layers = _tiny_layers()
    plan = solve_opq(layers, OpqConfig(prune=0.2, bits=bits, fit_int4=False))
    assert _average_packed_bits(layers, plan) == _solver_packed_bits(layers, plan)


@pytest.mark.parametrize("bits", [3.0, 3.5, 4.0])
def test_codes_of_unpruned_layers_have_the_packed_bits_the_solver_computed(bits):
    layers = _tiny_layers()
    plan = solve_opq(layers, OpqConfig(prune=0.0, bits=bits, fit_int4=False))
    assert _average_packed_bits(layers, plan) == _solver_packed_bits(layers, plan)


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.9), bits=st.sampled_from(BITS))
def test_kept_weights_of_pruned_layers_never_round_to_zero(layers, prune, bits):
    # keep_survivors: the prune ratio asked for is the ratio stored
    plan = solve_opq(layers, OpqConfig(prune=prune, bits=bits))
    for layer, p in zip(layers, plan.layers):
        codes = _codes(layer, p)
        assert not codes[~p.mask].any()
        if not p.mask.all():
            np.testing.assert_array_equal(codes != 0, p.mask & (layer.values != 0))


@pytest.mark.parametrize("bits", [6.0, 7.0])
@pytest.mark.parametrize("prune", [0.3, 0.5])
def test_quantization_mse_of_kept_weights_matches_step_squared_over_12(bits, prune):
    # A rounding error uniform on [-Δ/2, Δ/2] has variance Δ²/12. At 6 bits the solver's
    # step is about 0.36τ (0.18τ at 7 bits): the Laplace density falls by e^(-Δ/τ) ≈ 0.7
    # across one step, which tilts the error within a bin and lowers its variance by about
    # (Δ/τ)²/12 ≈ 1%. The prune threshold (0.36τ at 30%) is above Δ/2, so no kept weight is
    # pushed up to ±Δ by keep_survivors. Measured: 0.98–1.01; the band 0.9–1.1 leaves room for
    # sampling noise and still catches a wrong step (a step off by 5% moves it by 10%).
    layer = Layer("big", np.random.default_rng(3).laplace(0, 0.05, size=(256, 1024)).astype(np.float32))
    plan = solve_opq([layer], OpqConfig(prune=prune, bits=bits))
    p = plan.layers[0]
    assert p.step / 2 < plan.diagnostics["laplace_threshold"]
    err = (_codes(layer, p) * np.float64(p.step) - layer.values)[p.mask]
    assert np.mean(err ** 2) / (p.step ** 2 / 12) == pytest.approx(1.0, abs=0.1)


@PROPERTY
@given(layers=laplace_layers(), prune=st.floats(0.0, 0.95), bits=st.floats(2.0, 8.0),
       mode=st.sampled_from(["laplace", "exact"]), fit_int4=st.booleans())
def test_solve_is_deterministic(layers, prune, bits, mode, fit_int4):
    config = OpqConfig(prune=prune, bits=bits, prune_mode=mode, fit_int4=fit_int4)
    first = solve_opq(layers, config)
    again = solve_opq([Layer(l.name, l.values.copy(), l.axis, l.groups) for l in layers], config)
    for a, b in zip(first.layers, again.layers, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.step == b.step
    assert first.diagnostics == again.diagnostics


def test_fixed_layers_stay_unpruned_at_eight_bit_caps():
    rng = np.random.default_rng(0)
    layers = [Layer(f"l{i}", rng.laplace(0, 0.05, size=(32, 64)).astype(np.float32)) for i in range(3)]
    plan = solve_opq(layers, OpqConfig(prune=0.5, bits=4), frozenset({"l0"}))
    fixed = plan.by_name()["l0"]
    assert fixed.mask.all()
    assert fixed.step == pytest.approx(float(np.abs(layers[0].values).max()) / 127)
    assert 1 - _kept_fraction(plan) == pytest.approx(0.5, abs=1 / (3 * 32 * 64))


@pytest.mark.parametrize("kwargs", [dict(prune=1.0), dict(prune=-0.1), dict(bits=1.9), dict(bits=8.1),
                                    dict(prune_mode="random")])
def test_out_of_range_configs_are_refused(kwargs):
    with pytest.raises(OptionError):
        OpqConfig(**kwargs)


# ---------------------------------------------------------------- layer sources


def test_solve_sources_in_laplace_mode_never_reads_all_layers_at_once():
    # what lets onnxjpq.pipeline.stream solve a model with one layer in memory: only the exact
    # (global magnitude) mode asks for every layer's values together
    from onnxjpq.methods.opq import ArraySource, solve_sources

    class OneAtATime(ArraySource):
        def values(self):
            raise AssertionError("values() read in laplace mode")

    rng = np.random.default_rng(3)
    layers = [Layer(f"l{i}", rng.laplace(0, 0.01 * (i + 1), size=(24, 40)).astype(np.float32)) for i in range(3)]
    config = OpqConfig(prune=0.5, bits=4)
    expected, got = solve_opq(layers, config), solve_sources([OneAtATime(l) for l in layers], config)
    for a, b in zip(expected.layers, got.layers, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.step, a.predicted_prune_ratio) == (b.step, b.predicted_prune_ratio)
    assert got.diagnostics == expected.diagnostics


def test_kept_at_least_compares_in_float64():
    from onnxjpq.methods.opq import kept_channels

    w = np.array([[0.1, 0.3], [0.2, 0.0]], np.float32)
    kept = kept_channels(w, np.array([[True, True], [True, False]]), 0)
    just_above = float(np.float32(0.1)) + 1e-12  # rounds to float32(0.1) in float32
    assert kept.at_least(just_above).tolist() == [1, 1]
    assert kept.at_least(float(np.float32(0.1))).tolist() == [2, 1]
    assert (kept.alpha.tolist(), kept.count.tolist()) == ([float(np.float32(0.3)), float(np.float32(0.2))], [2, 1])
