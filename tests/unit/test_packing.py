"""The packed format's arrays (onnxjpq.core.packing): round trips, choices and sizes.

Layers are drawn as (shape, channel axis, groups, per-channel widths 0..8 or up
to 16, density): each channel's codes are uniform in [-m, m] with m = 2^(w-1)-1,
the channel's largest code forced in, then a share pruned.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq.core.packing import (
    MAX_WIDTH,
    PackedLayer,
    Stream,
    channel_view,
    decode,
    decode_codes,
    encode,
    pack_stream,
    packed_bytes,
    plane_widths,
    stream_bytes,
    unpack_stream,
)
from onnxjpq.core.quant import code_width, dequantize, to_channels
from onnxjpq.core.storage import storage_bits

# derandomize: the same examples on every run; database=None: nothing written outside tests/.
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def layer_codes(shape, axis, groups, widths, density, seed) -> np.ndarray:
    """Codes whose channels (to_channels order) have exactly `widths`, `density` of them kept."""
    rng = np.random.default_rng(seed)
    probe = to_channels(np.zeros(shape), axis, groups)
    chan = np.zeros(probe.shape, np.int32)
    for c, width in enumerate(widths):
        m = (1 << (width - 1)) - 1 if width else 0
        row = rng.integers(-m, m + 1, chan.shape[1]) * (rng.random(chan.shape[1]) < density)
        if m:
            row[rng.integers(chan.shape[1])] = m * rng.choice([-1, 1])  # the channel's width is w
        chan[c] = row
    view, perm = channel_view(tuple(shape), axis, groups)
    return chan.reshape(view).transpose(perm).reshape(shape)


@st.composite
def layers(draw, max_width: int = 8):
    kind = draw(st.sampled_from(["matmul", "conv", "conv_transpose", "vector"]))
    if kind == "matmul":
        shape, axis, groups = (draw(st.integers(1, 12)), draw(st.integers(1, 12))), draw(st.sampled_from([0, 1])), 1
    elif kind == "conv":
        shape, axis, groups = (draw(st.integers(1, 6)), draw(st.integers(1, 4)), 3, 3), 0, 1
    elif kind == "conv_transpose":  # [C_in, M/g, kh, kw], output channel g·M/g + m
        groups = draw(st.integers(2, 3))
        shape, axis = (groups * draw(st.integers(1, 3)), draw(st.integers(1, 3)), 2, 2), 1
    else:
        shape, axis, groups = (draw(st.integers(1, 40)),), None, 1
    channels = to_channels(np.zeros(shape), axis, groups).shape[0]
    same = draw(st.booleans())
    widths = ([draw(st.integers(0, max_width))] * channels if same
              else draw(st.lists(st.integers(0, max_width), min_size=channels, max_size=channels)))
    density = draw(st.sampled_from([1.0, 0.9, 0.5, 0.1, 0.01]))
    per_channel = draw(st.booleans())
    codes = layer_codes(shape, axis, groups, widths, density, draw(st.integers(0, 2**16)))
    steps = (np.linspace(0.01, 0.3, channels).astype(np.float32) if per_channel
             else np.float32(draw(st.sampled_from([0.05, 1.0, 0.37]))))
    return codes, axis, groups, steps


def steps_in_weight_order(steps, shape, axis, groups) -> np.ndarray:
    """Each weight's step, from steps in to_channels order."""
    if np.ndim(steps) == 0:
        return np.full(shape, steps, np.float32)
    chan = to_channels(np.zeros(shape, np.float32), axis, groups) + np.asarray(steps)[:, None]
    view, perm = channel_view(tuple(shape), axis, groups)
    return chan.reshape(view).transpose(perm).reshape(shape)


@PROPERTY
@given(layers())
def test_decode_gives_back_the_codes_and_their_dequantized_values(layer):
    codes, axis, groups, steps = layer
    packed = encode(codes, axis, groups, steps)
    np.testing.assert_array_equal(decode_codes(packed), codes)
    weights = decode(packed)
    assert weights.dtype == np.float32 and weights.shape == codes.shape
    np.testing.assert_array_equal(weights, dequantize(codes, steps_in_weight_order(steps, codes.shape, axis, groups)))


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(layers(max_width=12))
def test_codes_up_to_12_bits_round_trip(layer):
    codes, axis, groups, steps = layer
    packed = encode(codes, axis, groups, steps)
    np.testing.assert_array_equal(decode_codes(packed), codes)
    np.testing.assert_array_equal(decode(packed), dequantize(codes, steps_in_weight_order(steps, codes.shape, axis, groups)))


def test_codes_past_12_bits_need_as_many_weights_a_channel_as_table_entries():
    wide = np.zeros((2, 9000), np.int32)
    wide[0, :3] = [-8000, 8000, 5]  # 14 bits: a table of 16384 entries a row
    with pytest.raises(ValueError, match="too wide"):
        encode(wide, 0)
    wide = np.zeros((2, 20000), np.int32)
    wide[0, :3] = [-8000, 8000, 5]
    np.testing.assert_array_equal(decode_codes(encode(wide, 0)), wide)
    with pytest.raises(ValueError, match="too wide"):
        encode(np.array([40000, 0]), None)


@pytest.mark.parametrize("width", range(1, MAX_WIDTH + 1))
@pytest.mark.parametrize("count", [1, 7, 8, 9, 64, 1001])
def test_streams_of_every_width_round_trip_in_exactly_their_bits(width, count):
    fields = np.random.default_rng(width * count).integers(0, 1 << width, count)
    stream = pack_stream(fields, width)
    np.testing.assert_array_equal(unpack_stream(stream), fields)
    assert sum(plane_widths(width)) == width
    assert stream.nbytes == stream_bytes(width, count) <= count * width // 8 + len(plane_widths(width))
    assert all(p.dtype == np.uint8 for p in stream.planes)


def test_an_all_zero_channel_costs_one_row_index_and_no_value():
    codes = layer_codes((8, 16), 1, 1, [3] * 16, 1.0, seed=0)
    with_zero = codes.copy()
    with_zero[:, 5] = 0
    dense, zeroed = encode(codes, 1, steps=0.1), encode(with_zero, 1, steps=0.1)
    assert [s.count for s in zeroed.values] == [8 * 15]  # only the other channels' codes are stored
    assert zeroed.rows is not None and zeroed.rows[5] == 15  # the shared zero row
    assert packed_bytes(zeroed) == packed_bytes(dense) - 3 + zeroed.rows.nbytes
    np.testing.assert_array_equal(decode_codes(zeroed), with_zero)


def test_all_zero_layer_stores_nothing():
    packed = encode(np.zeros((4, 5), np.int32), 0, steps=0.5)
    assert packed_bytes(packed) == 0 and packed.values == ()
    np.testing.assert_array_equal(decode(packed), np.zeros((4, 5), np.float32))


def test_one_width_needs_no_rows():
    codes = layer_codes((6, 10), 1, 1, [4] * 10, 1.0, seed=1)
    packed = encode(codes, 1, steps=np.linspace(0.1, 1, 10))
    assert packed.rows is None and packed.sparsity == "dense" and packed.block == (10, 6)
    assert packed.steps.shape == (10, 1) and packed.channels == (10,)


def test_a_layer_with_few_zeros_is_stored_dense_in_exactly_the_reported_bits():
    codes = layer_codes((32, 64), 0, 1, [2, 3, 5, 8] * 8, 1.0, seed=2)  # uniform codes: some are 0
    packed = encode(codes, 0, steps=0.2)
    value_bits, index_bits, _ = storage_bits(codes, 0)  # index = the zeros' share of dense storage
    assert packed.sparsity == "dense" and packed.index is None
    assert [s.width for s in packed.values] == [2, 3, 5, 8]
    assert sum(s.nbytes for s in packed.values) == (value_bits + index_bits) / 8  # 8 x 64 codes a width


def test_99_percent_sparse_layer_uses_runs_and_is_far_smaller_than_dense():
    codes = layer_codes((128, 256), 1, 1, [4] * 256, 0.01, seed=3)
    packed = encode(codes, 1, steps=0.1)
    assert packed.sparsity == "runs" and 4 <= packed.run_width <= 8
    assert packed_bytes(packed) < 0.1 * codes.size * 4 / 8
    np.testing.assert_array_equal(decode_codes(packed), codes)


def test_half_pruned_layer_uses_the_bitmask():
    codes = layer_codes((64, 64), 0, 1, [3] * 64, 0.5, seed=4)
    packed = encode(codes, 0, steps=0.1)
    assert packed.sparsity == "mask" and packed.index.width == 1 and packed.index.count == codes.size


def test_fillers_cover_long_gaps_with_zero_codes():
    codes = np.zeros(1000, np.int32)
    codes[[0, 999]] = [3, -3]
    packed = encode(codes, None, steps=1.0)
    assert packed.sparsity == "runs"
    stored = sum(s.count for s in packed.values)
    assert stored == packed.index.count > 2  # fillers take entries and zero codes
    np.testing.assert_array_equal(decode_codes(packed), codes)


@pytest.mark.parametrize("groups, c_in, per_group", [(2, 4, 3), (3, 6, 1), (4, 8, 2)])
def test_grouped_conv_transpose_channels_round_trip(groups, c_in, per_group):
    shape = (c_in, per_group, 3, 3)
    channels = groups * per_group
    widths = [(c % 4) * 2 for c in range(channels)]  # 0, 2, 4, 6: zero channels included
    codes = layer_codes(shape, 1, groups, widths, 0.7, seed=groups)
    packed = encode(codes, 1, groups, steps=np.arange(1, channels + 1, dtype=np.float32))
    np.testing.assert_array_equal(decode_codes(packed), codes)
    np.testing.assert_array_equal(
        decode(packed), dequantize(codes, steps_in_weight_order(np.arange(1, channels + 1), shape, 1, groups)))


def laplace_codes(shape, axis, bits, prune, seed):
    """Laplace(1) weights on the shared step 6/2^bits, the `prune` smallest pruned."""
    w = np.random.default_rng(seed).laplace(0, 1, shape)
    step = 6.0 / (1 << bits)
    codes = np.sign(w) * np.floor(np.abs(w) / step + 0.5)
    if prune:
        codes[np.abs(w) < np.quantile(np.abs(w), prune)] = 0
    return codes.astype(np.int32)


@pytest.mark.parametrize("shape, axis", [((256, 512), 1), ((64, 32, 3, 3), 0), ((4096,), None)])
@pytest.mark.parametrize("bits", [2, 3, 4, 6])
@pytest.mark.parametrize("prune", [0.0, 0.5, 0.9, 0.99])
def test_packed_bytes_are_within_a_few_percent_and_a_constant_of_storage_bits(shape, axis, bits, prune):
    codes = laplace_codes(shape, axis, bits, prune, seed=bits)
    per_channel = axis is not None and bits == 4
    channels = to_channels(codes, axis).shape[0]
    steps = np.full(channels, 0.1, np.float32) if per_channel else 0.1
    packed = encode(codes, axis, 1, steps)
    value, index, params = storage_bits(codes, axis, 1, per_channel)
    report_bytes = (value + index + params) / 8
    planes = len(packed.arrays())
    # per channel: up to 2 bytes of rows, against the report's 4 bits of width
    assert packed_bytes(packed) <= 1.03 * report_bytes + 2 * channels + planes
    assert packed_bytes(packed) >= 0.8 * report_bytes - planes  # not a different accounting either
    np.testing.assert_array_equal(decode_codes(packed), codes)


def test_packed_bytes_count_every_array_stored():
    codes = layer_codes((16, 24), 1, 1, [0, 2, 3, 5] * 6, 0.5, seed=5)
    packed = encode(codes, 1, steps=np.ones(24, np.float32))
    arrays = [v for f in fields(PackedLayer) for v in _arrays(getattr(packed, f.name))]
    assert packed_bytes(packed) == sum(a.nbytes for a in arrays if a is not packed.steps or a.size) > 0


def _arrays(value):
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, Stream):
        return list(value.planes)
    if isinstance(value, tuple):
        return [a for v in value for a in _arrays(v)]
    return []


def test_encoding_is_deterministic():
    codes = layer_codes((20, 30), 0, 1, list(range(9)) * 2 + [3, 4], 0.3, seed=6)
    a, b = encode(codes, 0, steps=0.1), encode(codes.copy(), 0, steps=0.1)
    assert all(x.tobytes() == y.tobytes() and x.dtype == y.dtype for x, y in zip(a.arrays(), b.arrays(), strict=True))


def test_wrong_step_counts_are_refused():
    with pytest.raises(ValueError, match="3 steps for 2 channels"):
        encode(np.ones((2, 2), np.int32), 0, steps=np.ones(3))


def test_widths_follow_code_width():
    codes = np.array([[1, -1], [3, 0], [4, -4], [127, 0]])
    packed = encode(codes, 0)
    assert [s.width for s in packed.values] == sorted(set(code_width(np.array([1, 3, 4, 127])).tolist()))
