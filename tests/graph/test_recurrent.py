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


FEEDS = {"x": np.random.default_rng(0).standard_normal((STEPS, 1, INPUT)).astype(np.float32)}


def _assert_outputs_close(model, out) -> None:
    assert np.abs(run(out, FEEDS)[0] - run(model, FEEDS)[0]).max() < 0.05


def _lstm_with_2d_weights(body: str):
    """An LSTM whose W [4H, in] and R [4H, H] reach it through `body` (which defines w3, r3)."""
    text = f"""
    agraph (float[{STEPS}, 1, {INPUT}] x) => (float[{STEPS}, 1, 1, {HIDDEN}] y) {{
        axes = Constant <value = int64[1] {{0}}> ()
        {body}
        y = LSTM <hidden_size = {HIDDEN}> (x, w3, r3)
    }}"""
    return make_model(text, {"W": laplace((4 * HIDDEN, INPUT), 0.2, seed=1),
                             "R": laplace((4 * HIDDEN, HIDDEN), 0.2, seed=2)})


@pytest.mark.parametrize("op", sorted(GATES))
def test_recurrent_weights_are_compressed_and_outputs_stay_close(op):
    model = recurrent_model(op)
    out, report = compress_model(model, OpqConfig(bits=8))
    assert sorted(row["name"] for row in report["layers"]) == ["R", "W"]
    assert {row["macs"] for row in report["layers"]} == {STEPS * GATES[op] * HIDDEN * INPUT,
                                                       STEPS * GATES[op] * HIDDEN * HIDDEN}
    _assert_outputs_close(model, out)


def test_lstm_weight_behind_unsqueeze_is_compressed_where_it_is_stored():
    """PyTorch writes LSTM weights as Unsqueeze(W[4H, in], axes=[0])."""
    model = _lstm_with_2d_weights("w3 = Unsqueeze (W, axes)\n        r3 = Unsqueeze (R, axes)")
    out, report = compress_model(model, OpqConfig(bits=8))
    assert sorted(row["name"] for row in report["layers"]) == ["R", "W"]
    assert {row["shape"][0] for row in report["layers"]} == {4 * HIDDEN}
    _assert_outputs_close(model, out)


def test_a_weight_computed_from_constants_is_reported_as_not_followed():
    """PyTorch reorders LSTM gates with Slice/Concat of the stored weight: not followed, but said."""
    model = _lstm_with_2d_weights(f"""starts = Constant <value = int64[1] {{0}}> ()
        mid = Constant <value = int64[1] {{{2 * HIDDEN}}}> ()
        ends = Constant <value = int64[1] {{{4 * HIDDEN}}}> ()
        a = Slice (W, starts, mid)
        b = Slice (W, mid, ends)
        w2 = Concat <axis = 0> (b, a)
        w3 = Unsqueeze (w2, axes)
        r3 = Unsqueeze (R, axes)""")
    out, report = compress_model(model, OpqConfig(bits=8))
    assert [row["name"] for row in report["layers"]] == ["R"]
    reasons = [s["reason"] for s in report["skipped"]]
    assert reasons == ["computed from constants through Slice/Concat/Unsqueeze (not followed; left in float)"]
    _assert_outputs_close(model, out)
