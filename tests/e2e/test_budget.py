"""Budget mode (ANNC-style allocation): options, allocation, budgets, and the bundled CNN."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq import OptionError, Selection
from onnxjpq.pipeline.compress import compress_model
from onnxjpq.graph.io import load_model
from onnxjpq.methods.annc import (AnncConfig, allocate, index_cost, layer_options, solve_annc)
from onnxjpq.core.storage import index_bits
from onnxjpq.testing import laplace
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import accuracy, predict, session


MODELS = Path(__file__).resolve().parents[2] / "models"


class _Layer:
    def __init__(self, name, values):
        self.name, self.values, self.axis, self.groups = name, values, 0, 1
        self.extra_param_bits = 0


def _layers(seed=0):
    return [_Layer(f"w{i}", laplace(shape, scale, seed + i)) for i, (shape, scale) in
            enumerate([((16, 27), 0.2), ((64, 144), 0.05), ((128, 256), 0.02), ((10, 128), 0.1)])]


def test_options_cost_falls_with_sparsity_and_bits():
    o = layer_options(laplace((64, 64)), 64, [0.0, 0.5, 0.9], [2, 4, 8])
    cost = o.cost.reshape(3, 3)
    assert (np.diff(cost, axis=1) > 0).all()  # more bits cost more
    assert (np.diff(cost[:, -1]) < 0).all()  # more sparsity costs less at 8 bits


def test_options_distortion_falls_with_bits():
    o = layer_options(laplace((64, 64)), 64, [0.0], [2, 3, 4, 6, 8])
    assert (np.diff(o.distortion) < 0).all()


def test_index_cost_estimate_is_close_to_measured_on_random_masks():
    rng = np.random.default_rng(0)
    for keep in (0.05, 0.3, 0.7):
        mask = rng.random(20000) < keep
        measured = index_bits(mask, 3)
        assert abs(index_cost(mask.size, int(mask.sum()), 3) - measured) <= 0.05 * measured + 64


@settings(max_examples=20, deadline=None)
@given(st.floats(4, 40), st.integers(0, 3))
def test_allocation_meets_the_budget_and_beats_uniform(rate, seed):
    layers = _layers(seed)
    plan = solve_annc(layers, AnncConfig(rate=rate))
    d = plan.diagnostics
    assert d["allocated"] <= d["budget"] + 1e-6
    if d["uniform_predicted_distortion"] is not None:
        assert d["predicted_distortion"] <= d["uniform_predicted_distortion"] + 1e-12


def test_allocate_refuses_an_unreachable_budget():
    o = [layer_options(laplace((32, 32)), 32, [0.0, 0.5], [2, 8])]
    with pytest.raises(OptionError, match="unreachable"):
        allocate(o, np.ones(1), 10.0)


def test_uniform_choice_is_the_same_option_everywhere():
    layers = _layers()
    plan = solve_annc(layers, AnncConfig(rate=10, uniform=True))
    ratios = {round(1 - p.mask.mean(), 2) for p in plan.layers}
    codes = {p.max_code for p in plan.layers}
    assert len(ratios) == 1 and len(codes) == 1


def test_pow2_restricts_code_widths():
    plan = solve_annc(_layers(), AnncConfig(rate=12, pow2=True))
    assert {p.max_code for p in plan.layers} <= {1, 7, 127}


@pytest.mark.parametrize("kwargs", [dict(), dict(rate=8, size_kb=3), dict(rate=1.0), dict(size_kb=-1),
                                    dict(rate=8, min_bits=1), dict(rate=8, min_bits=6, max_bits=4)])
def test_bad_budget_configs_are_refused(kwargs):
    with pytest.raises(OptionError):
        AnncConfig(**kwargs)


def _kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of the candidate's softmax from the reference's."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_softmax(reference))
    return float((p * (log_softmax(reference) - log_softmax(logits))).sum(axis=1).mean())


@pytest.mark.slow
def test_rate_16_on_the_cnn_keeps_accuracy_and_beats_uniform():
    """Output error is measured as the classifier's output distribution sees it: KL divergence
    from the fp32 softmax, and top-1 disagreement with fp32."""
    model = load_model(MODELS / "lenet5.onnx")
    data = load_dataset(MODELS / "lenet5_test.npz", session(model))
    reference = predict(session(model), data)
    results = {}
    for uniform in (False, True):
        out, report = compress_model(model, AnncConfig(rate=16, uniform=uniform), Selection())
        logits = predict(session(out), data)
        disagreement = float((logits.argmax(1) != reference.argmax(1)).mean())
        results[uniform] = (accuracy(logits, data.labels), _kl(reference, logits), disagreement,
                            report["totals"]["storage_rate"])
    fp32 = accuracy(reference, data.labels)
    assert results[False][3] >= 16 and results[True][3] >= 16
    assert results[False][0] >= fp32 - 1.0
    assert results[False][1] < results[True][1]
    assert results[False][2] < results[True][2]


@pytest.mark.slow
def test_bops_objective_meets_the_bops_reduction():
    model = load_model(MODELS / "lenet5.onnx")
    out, report = compress_model(model, AnncConfig(rate=40, objective="bops"), Selection())
    totals = report["totals"]
    assert totals["bops_ratio"] >= 40
    assert totals["macs"] == 9216 + 294912 * 2 + 30720 + 10080 + 840


def test_bops_objective_takes_a_rate():
    with pytest.raises(OptionError, match="rate"):
        AnncConfig(size_kb=4, objective="bops")
