"""The data-aware allocation's guard on large layer errors (workflows.data_budget)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxjpq.methods.annc import LayerOptions, allocate
from onnxjpq.workflows.data_budget import (ERROR_CEILING, OptionTable, Overshoot, ceiling_guarded, cheapest_total,
                                           fit_stage, reserved_total)


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


# The reserve for the unsolved layers (fit_stage): a table's costs shrink with its estimated
# share of incidental zeros; the reserve counts the cheapest option as if it had none.
def _table(base_costs, zero_shares, errors) -> OptionTable:
    options = [SimpleNamespace(base=c) for c in base_costs]
    estimates = SimpleNamespace(options=options, zero_shares=list(zero_shares), errors=np.array(errors, float))
    return OptionTable(estimates, lambda option, zeros: option.base * (1.0 - zeros))


def _entry(name, table, choice=0, solved=True):
    entry = SimpleNamespace(name=name, table=table, choice=choice, plan=object() if solved else None)
    entry.cost = float(table.costs[choice]) if solved else 0.0
    return entry


def _fit(total, stage_costs=(20.0, 12.0, 6.0)):
    earlier = _entry("earlier", _table([10.0], [0.0], [0.0]))
    stage = _entry("stage", _table(stage_costs, [0.0] * len(stage_costs), [0.0, 0.1, 0.5][:len(stage_costs)]))
    later = _entry("later", _table([10.0, 8.0], [0.0, 0.5], [0.0, 0.3]), solved=False)
    solves = []

    def resolve(entry, inputs):
        solves.append(entry.choice)
        entry.cost = float(entry.table.costs[entry.choice])

    fit_stage(SimpleNamespace(entries=[earlier, stage, later]), total, [stage], {"stage": None}, resolve)
    return stage.choice, solves


def test_the_reserve_is_the_cheapest_option_without_its_estimated_zeros():
    later = _table([10.0, 8.0], [0.0, 0.5], [0.0, 0.3])
    assert cheapest_total({"later": later}) == 4.0
    assert reserved_total({"later": later}) == 8.0


def test_the_stage_steps_down_until_the_reserve_fits():
    """10 spent + 12 + the reserve 8 > 29, so the stage takes its 6-bit option (the estimate
    alone, 4, would have stopped at 12 and left the later layer 3 where it may need 8)."""
    assert _fit(29.0) == (2, [1, 2])
    assert _fit(30.0) == (1, [1])
    assert _fit(38.0) == (0, [])


def test_out_of_moves_the_estimate_decides_between_going_on_and_overshooting():
    assert _fit(27.0, stage_costs=(20.0, 12.0)) == (1, [1])  # 10 + 12 + 4 fits the estimate
    with pytest.raises(Overshoot) as raised:
        _fit(25.0, stage_costs=(20.0, 12.0))
    assert raised.value.need == 26.0 and raised.value.total == 25.0
