"""The data-aware allocation's guard on large layer errors (workflows.data_budget)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from onnxjpq.methods.annc import LayerOptions, allocate
from onnxjpq.workflows.data_budget import ERROR_CEILING, ceiling_guarded


def _layer(errors, costs) -> LayerOptions:
    n = len(errors)
    return LayerOptions(np.zeros(n), np.full(n, 4), np.zeros(n), np.full(n, 7), np.array(errors, float),
                        np.array(costs, float))


def _allocate(errors_a, errors_b, weights, budget, guard: bool) -> list[int]:
    wrap = ceiling_guarded if guard else np.asarray
    return allocate([_layer(wrap(np.array(errors_a)), [2.0, 1.0]), _layer(wrap(np.array(errors_b)), [2.0, 1.0])],
                    np.array(weights), budget)


def test_an_insensitive_layer_is_not_driven_past_the_ceiling_when_another_can_give():
    """Layer a measures almost no effect on the outputs (weight 1e-3), so the first-order sum would
    have it take a 90 % output error; the guard makes the sensitive layer give its bits instead."""
    big, small = 0.9, 0.05
    assert big > ERROR_CEILING > small
    args = ([0.0, big], [0.0, small], [1e-3, 1.0], 3.0)
    assert _allocate(*args, guard=False) == [1, 0]
    assert _allocate(*args, guard=True) == [0, 1]


def test_past_the_ceiling_when_the_budget_leaves_no_other_choice():
    assert _allocate([0.0, 0.9], [0.0, 0.8], [1.0, 1.0], 2.0, guard=True) == [1, 1]


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=20))
def test_the_guard_keeps_errors_under_the_ceiling_and_the_order_of_all(errors):
    errors = np.array(errors)
    guarded = ceiling_guarded(errors)
    below = errors <= ERROR_CEILING
    assert np.array_equal(guarded[below], errors[below])
    assert np.all(guarded[~below] > errors.max(initial=0.0))
    order = np.argsort(errors, kind="stable")
    assert np.all(np.diff(guarded[order]) >= 0)
