"""LSTM, GRU and RNN weights (W and R) are compressed like any other layer."""

from __future__ import annotations

import numpy as np
import pytest

from onnxjpq import OpqConfig, compress_model
from onnxjpq.testing import laplace, make_model, run

HIDDEN, INPUT, STEPS = 16, 12, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op: str):
    gates = GATES[op]
    text = f"""
    agraph (float[{STEPS}, 1, {INPUT}] x) => (float[{STEPS}, 1, 1, {HIDDEN}] y) {{
        y = {op} <hidden_size = {HIDDEN}> (x, W, R)
    }}"""
    return make_model(text, {"W": laplace((1, gates * HIDDEN, INPUT), 0.2, seed=1),
                             "R": laplace((1, gates * HIDDEN, HIDDEN), 0.2, seed=2)})


@pytest.mark.parametrize("op", sorted(GATES))
def test_recurrent_weights_are_compressed_and_outputs_stay_close(op):
    model = recurrent_model(op)
    out, report = compress_model(model, OpqConfig(bits=8))
    assert sorted(row["name"] for row in report["layers"]) == ["R", "W"]
    assert {row["macs"] for row in report["layers"]} == {STEPS * GATES[op] * HIDDEN * INPUT,
                                                       STEPS * GATES[op] * HIDDEN * HIDDEN}
    feeds = {"x": np.random.default_rng(0).standard_normal((STEPS, 1, INPUT)).astype(np.float32)}
    expected, got = run(model, feeds)[0], run(out, feeds)[0]
    assert np.abs(got - expected).max() < 0.05


def test_lstm_weight_behind_unsqueeze_is_compressed_where_it_is_stored():
    """PyTorch writes LSTM weights as Unsqueeze(W[4H, in], axes=[0])."""
    text = f"""
    agraph (float[{STEPS}, 1, {INPUT}] x) => (float[{STEPS}, 1, 1, {HIDDEN}] y) {{
        axes = Constant <value = int64[1] {{0}}> ()
        w3 = Unsqueeze (W, axes)
        r3 = Unsqueeze (R, axes)
        y = LSTM <hidden_size = {HIDDEN}> (x, w3, r3)
    }}"""
    model = make_model(text, {"W": laplace((4 * HIDDEN, INPUT), 0.2, seed=1),
                              "R": laplace((4 * HIDDEN, HIDDEN), 0.2, seed=2)})
    out, report = compress_model(model, OpqConfig(bits=8))
    assert sorted(row["name"] for row in report["layers"]) == ["R", "W"]
    assert {row["shape"][0] for row in report["layers"]} == {4 * HIDDEN}
    feeds = {"x": np.random.default_rng(0).standard_normal((STEPS, 1, INPUT)).astype(np.float32)}
    assert np.abs(run(out, feeds)[0] - run(model, feeds)[0]).max() < 0.05


def test_a_weight_computed_from_constants_is_reported_as_not_followed():
    """PyTorch reorders LSTM gates with Slice/Concat of the stored weight: not followed, but said."""
    text = f"""
    agraph (float[{STEPS}, 1, {INPUT}] x) => (float[{STEPS}, 1, 1, {HIDDEN}] y) {{
        starts = Constant <value = int64[1] {{0}}> ()
        mid = Constant <value = int64[1] {{{2 * HIDDEN}}}> ()
        ends = Constant <value = int64[1] {{{4 * HIDDEN}}}> ()
        axes = Constant <value = int64[1] {{0}}> ()
        a = Slice (W, starts, mid)
        b = Slice (W, mid, ends)
        w2 = Concat <axis = 0> (b, a)
        w3 = Unsqueeze (w2, axes)
        r3 = Unsqueeze (R, axes)
        y = LSTM <hidden_size = {HIDDEN}> (x, w3, r3)
    }}"""
    model = make_model(text, {"W": laplace((4 * HIDDEN, INPUT), 0.2, seed=1),
                              "R": laplace((4 * HIDDEN, HIDDEN), 0.2, seed=2)})
    out, report = compress_model(model, OpqConfig(bits=8))
    assert [row["name"] for row in report["layers"]] == ["R"]
    reasons = [s["reason"] for s in report["skipped"]]
    assert reasons == ["computed from constants through Slice/Concat/Unsqueeze (not followed; left in float)"]
    feeds = {"x": np.random.default_rng(0).standard_normal((STEPS, 1, INPUT)).astype(np.float32)}
    assert np.abs(run(out, feeds)[0] - run(model, feeds)[0]).max() < 0.05
