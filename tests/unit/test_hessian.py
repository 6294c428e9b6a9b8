"""im2col and the layer-input statistics against explicit loops over output positions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxjpq.core.hessian import (ConvGeometry, accumulate_stats, column_stats, conv_columns, conv_stats,
                                  empty_stats, im2col, matmul_stats, merge_stats, output_error, row_errors)


def receptive_fields(x: np.ndarray, geo: ConvGeometry):
    """(n, group, output position, field vector) by explicit index arithmetic, zeros outside x."""
    r, c_per_group = geo.rank, x.shape[1] // geo.groups
    out = geo.output_shape(x.shape[2:])
    for n, g in itertools.product(range(x.shape[0]), range(geo.groups)):
        for pos in itertools.product(*(range(o) for o in out)):
            field = []
            for c in range(g * c_per_group, (g + 1) * c_per_group):
                for k in itertools.product(*(range(kk) for kk in geo.kernel_shape)):
                    at = [pos[i] * geo.strides[i] - geo.pads[i] + k[i] * geo.dilations[i] for i in range(r)]
                    inside = all(0 <= a < x.shape[2 + i] for i, a in enumerate(at))
                    field.append(x[(n, c) + tuple(at)] if inside else 0.0)
            yield n, g, pos, np.array(field)


def direct_stats(x: np.ndarray, geo: ConvGeometry):
    d = x.shape[1] // geo.groups * geo.kernel_size
    h, s, count = np.zeros((geo.groups, d, d)), np.zeros((geo.groups, d)), 0
    for _, g, _, v in receptive_fields(x, geo):
        h[g] += np.outer(v, v)
        s[g] += v
        count += g == 0
    return h, s, count


def direct_conv(x: np.ndarray, w: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Conv output by the weight's own indices w[o, c, k1, ..]: the layout check of im2col's rows."""
    out_per_group, c_per_group = w.shape[0] // geo.groups, x.shape[1] // geo.groups
    y = np.zeros((x.shape[0], w.shape[0]) + geo.output_shape(x.shape[2:]))
    for n, g, pos, v in receptive_fields(x, geo):
        field = v.reshape((c_per_group,) + geo.kernel_shape)
        for o in range(g * out_per_group, (g + 1) * out_per_group):
            y[(n, o) + pos] = (w[o] * field).sum()
    return y


CASES = [
    # spatial, channels, out channels, geometry
    ((9,), 4, 6, ConvGeometry((3,), strides=(2,), pads=(1, 2), dilations=(2,), groups=2)),
    ((7,), 3, 3, ConvGeometry((2,), pads=(0, 1), groups=3)),
    ((6, 7), 4, 4, ConvGeometry((3, 2), strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2), groups=2)),
    ((5, 5), 3, 6, ConvGeometry((3, 3), pads=(1, 1, 1, 1), groups=3)),  # depthwise, multiplier 2
    ((8, 6), 2, 4, ConvGeometry((2, 3), strides=(3, 2), dilations=(2, 1))),
    ((4, 5, 4), 2, 2, ConvGeometry((2, 3, 2), strides=(1, 2, 1), pads=(1, 0, 1, 0, 1, 1))),
]


@pytest.mark.parametrize("spatial, channels, out_channels, geo", CASES)
def test_im2col_hessians_equal_a_loop_over_output_positions(spatial, channels, out_channels, geo):
    x = np.random.default_rng(0).normal(size=(2, channels) + spatial)
    stats = conv_stats(x, geo)
    h, s, count = direct_stats(x, geo)
    np.testing.assert_allclose(stats.xxt, h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.xsum, s, rtol=1e-12, atol=1e-12)
    assert stats.count == count == 2 * math.prod(geo.output_shape(spatial))
    np.testing.assert_allclose(stats.mean, s / count)


@pytest.mark.parametrize("spatial, channels, out_channels, geo", CASES)
def test_im2col_rows_follow_the_weight_layout(spatial, channels, out_channels, geo):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, channels) + spatial)
    w = rng.normal(size=(out_channels, channels // geo.groups) + geo.kernel_shape)
    cols = im2col(x, geo.kernel_shape, geo.strides, geo.pads, geo.dilations, geo.groups)
    w_groups = w.reshape(geo.groups, out_channels // geo.groups, -1)
    y = np.matmul(w_groups, cols)  # [g, O_g, N·P]
    out = geo.output_shape(spatial)
    y = y.reshape(out_channels, 2, *out).swapaxes(0, 1)
    np.testing.assert_allclose(y, direct_conv(x, w, geo), rtol=1e-12, atol=1e-12)


def test_depthwise_gives_one_kernel_sized_hessian_per_channel():
    x = np.random.default_rng(2).normal(size=(3, 5, 6, 6)).astype(np.float32)
    stats = conv_stats(x, ConvGeometry((3, 3), pads=(1, 1, 1, 1), groups=5))
    assert stats.xxt.shape == (5, 9, 9) and stats.xxt.dtype == np.float64
    assert stats.row_hessians(10).shape == (10, 9, 9)
    np.testing.assert_array_equal(stats.row_hessians(10)[3], stats.hessian(1))


def test_chunks_bound_the_columns_and_give_the_same_statistics():
    x = np.random.default_rng(3).normal(size=(3, 4, 10, 9))
    geo = ConvGeometry((3, 3), strides=(2, 1), pads=(1, 1, 2, 0), dilations=(1, 2), groups=2)
    whole = conv_stats(x, geo)
    chunks = list(conv_columns(x, geo, max_elements=200))  # below one sample: output rows
    assert len(chunks) > 3 and max(c.size for c in chunks) <= 2 * 200
    chunked = conv_stats(x, geo, max_elements=200)
    np.testing.assert_allclose(chunked.xxt, whole.xxt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked.xsum, whole.xsum, rtol=1e-12, atol=1e-12)
    assert chunked.count == whole.count


def test_matmul_flattens_batch_and_sequence_dims():
    x = np.random.default_rng(4).normal(size=(2, 5, 7)).astype(np.float32)
    stats = matmul_stats(x, max_elements=20)
    flat = x.reshape(-1, 7).astype(np.float64)
    np.testing.assert_allclose(stats.hessian(), flat.T @ flat, rtol=1e-12)
    np.testing.assert_allclose(stats.mean[0], flat.mean(axis=0), rtol=1e-12)
    assert stats.count == 10
    left = matmul_stats(np.swapaxes(x, -1, -2), feature_axis=-2)  # weight on the left: features on axis -2
    np.testing.assert_allclose(left.hessian(), stats.hessian(), rtol=1e-12)


def test_batches_merge_to_the_statistics_of_all_columns():
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(4, 6)) for _ in range(3)]
    total = accumulate_stats(batches)
    np.testing.assert_allclose(total.hessian(), matmul_stats(np.concatenate(batches)).hessian(), rtol=1e-12)
    assert merge_stats(empty_stats(6), total).count == 12
    geo = ConvGeometry((2,), groups=2)
    conv_batches = [rng.normal(size=(1, 4, 5)) for _ in range(2)]
    np.testing.assert_allclose(accumulate_stats(conv_batches, geo).xxt,
                               conv_stats(np.concatenate(conv_batches), geo).xxt, rtol=1e-12)


def test_output_error_is_the_squared_output_difference():
    rng = np.random.default_rng(6)
    x, w = rng.normal(size=(5, 40)), rng.normal(size=(3, 5))
    w_hat = np.round(w)
    h = column_stats([x[None]]).hessian()
    assert output_error(w - w_hat, h) == pytest.approx(((w @ x - w_hat @ x) ** 2).sum(), rel=1e-12)
    per_row = np.stack([h] * 3)
    np.testing.assert_allclose(row_errors(w - w_hat, per_row), row_errors(w - w_hat, h), rtol=1e-12)
    assert output_error(w - w_hat, None) == pytest.approx(((w - w_hat) ** 2).sum())


def test_bad_geometries_and_inputs_are_refused():
    with pytest.raises(ValueError):
        ConvGeometry((3, 3), strides=(1,))
    with pytest.raises(ValueError):
        ConvGeometry((3,), pads=(-1, 0))
    with pytest.raises(ValueError):
        conv_stats(np.zeros((1, 3, 5)), ConvGeometry((3,), groups=2))
    with pytest.raises(ValueError):
        ConvGeometry((5,)).output_shape((3,))


@st.composite
def conv_cases(draw):
    rank = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 3))
    channels = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * rank))
    geo = ConvGeometry(kernel, strides, pads, dilations, groups)
    spatial = tuple(draw(st.integers(max(1, dilations[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + rank]), 7))
                    for i in range(rank))
    return channels, spatial, geo, draw(st.integers(0, 2 ** 16))


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_im2col_statistics_match_the_loops_for_any_shape(case):
    channels, spatial, geo, seed = case
    x = np.random.default_rng(seed).normal(size=(2, channels) + spatial)
    stats = conv_stats(x, geo, max_elements=64)
    h, s, count = direct_stats(x, geo)
    np.testing.assert_allclose(stats.xxt, h, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.xsum, s, rtol=1e-10, atol=1e-10)
    assert stats.count == count


def test_merge_into_sums_into_the_total_as_merge_stats_does():
    from onnxjpq.core.hessian import column_stats, merge_into, merge_stats

    rng = np.random.default_rng(3)
    a, b = (column_stats([rng.standard_normal((2, 5, 7))]) for _ in range(2))
    expected = merge_stats(a, b)
    b_before = b.xxt.copy()
    total = merge_into(a, b)
    np.testing.assert_array_equal(total.xxt, expected.xxt)
    np.testing.assert_array_equal(total.xsum, expected.xsum)
    assert total.count == expected.count and total.xxt is a.xxt  # no new cols x cols array
    np.testing.assert_array_equal(b.xxt, b_before)
