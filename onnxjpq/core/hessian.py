"""Layer-input statistics for the layer-wise solvers (METHODS.md §7a, §7e).

A layer with weight W [rows = output channels, cols = inputs] and calibration
inputs X [cols, n] (one column per sample position) has output error

    ‖WX − ŴX‖²_F = tr((W−Ŵ) H (W−Ŵ)ᵀ),   H = X Xᵀ = Σ_columns x xᵀ,

so H (cols × cols, float64) and the column sum Σ x (for the mean E[x] of bias
correction, §7e) are all a solver needs of the data. They add over batches,
which `merge_stats` does; each batch is turned into columns a bounded chunk at
a time (`max_elements` float64 values), so memory stays at cols² + one chunk.

Columns per op:
- MatMul / Gemm: the rows of the activation operand, batch and sequence dims
  flattened (`matmul_stats`; `feature_axis` names the axis the weight contracts).
- Conv [O, C/g, k1, .., kr]: im2col. Each output position's receptive field,
  with the layer's strides, pads and dilations, is one column per group, its
  C/g·k1·…·kr values in the order of the weight reshaped to [O, C/g·k1·…·kr]
  (channel-major, then k1, …, then kr). One Hessian per group; depthwise
  (groups = C) gives one k1·…·kr Hessian per channel. Zero padding is part of
  the columns, so the column mean is the mean over all output positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

MAX_ELEMENTS = 1 << 22  # float64 values of the column chunk built at once (32 MiB)


@dataclass(frozen=True)
class ConvGeometry:
    """A Conv's kernel, strides, pads (ONNX order: all begins, then all ends), dilations, groups.

    Empty strides, pads or dilations mean ONNX's defaults (1, 0, 1).

    >>> ConvGeometry((3, 3), strides=(2, 2), pads=(1, 1, 1, 1)).output_shape((8, 7))
    (4, 4)
    """

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    groups: int = 1

    def __post_init__(self):
        r = len(self.kernel_shape)
        fields = {"kernel_shape": self.kernel_shape, "strides": self.strides or (1,) * r,
                  "pads": self.pads or (0,) * (2 * r), "dilations": self.dilations or (1,) * r}
        for name, value in fields.items():
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if r < 1 or len(self.strides) != r or len(self.dilations) != r or len(self.pads) != 2 * r:
            raise ValueError(f"conv geometry of rank {r} has strides {self.strides}, pads {self.pads}, "
                             f"dilations {self.dilations}")
        if min(self.kernel_shape + self.strides + self.dilations + (self.groups,)) < 1 or min(self.pads) < 0:
            raise ValueError(f"conv geometry needs positive sizes and non-negative pads: {self}")

    @property
    def rank(self) -> int:
        return len(self.kernel_shape)

    @property
    def kernel_size(self) -> int:
        return math.prod(self.kernel_shape)

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """floor((L + pad_begin + pad_end − d·(k−1) − 1) / s) + 1 per spatial axis."""
        r = self.rank
        out = tuple((size + self.pads[i] + self.pads[i + r] - self.dilations[i] * (self.kernel_shape[i] - 1) - 1)
                    // self.strides[i] + 1 for i, size in enumerate(spatial))
        if len(spatial) != r or min(out) < 1:
            raise ValueError(f"input spatial shape {tuple(spatial)} gives no output for {self}")
        return out


@dataclass(frozen=True)
class InputStats:
    """Σ x xᵀ ([groups, cols, cols]), Σ x ([groups, cols]) over `count` columns, float64."""

    xxt: np.ndarray
    xsum: np.ndarray
    count: int

    @property
    def groups(self) -> int:
        return self.xxt.shape[0]

    @property
    def cols(self) -> int:
        return self.xxt.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """E[x] per group and column, [groups, cols] (zeros before any column)."""
        return self.xsum / max(self.count, 1)

    def hessian(self, group: int = 0) -> np.ndarray:
        """H = X Xᵀ of one group (the solvers' H; no 1/n, damping is relative)."""
        return self.xxt[group]

    def row_hessians(self, rows: int) -> np.ndarray:
        """H of every output channel, [rows, cols, cols]: channel o is in group o // (rows / groups)."""
        if rows % self.groups:
            raise ValueError(f"{rows} output channels do not split into {self.groups} groups")
        return self.xxt[np.arange(rows) // (rows // self.groups)]


def empty_stats(cols: int, groups: int = 1) -> InputStats:
    """Statistics of no columns yet."""
    return InputStats(np.zeros((groups, cols, cols)), np.zeros((groups, cols)), 0)


def merge_stats(a: InputStats, b: InputStats) -> InputStats:
    """Statistics of both sets of columns (batches add)."""
    if a.xxt.shape != b.xxt.shape:
        raise ValueError(f"cannot merge input statistics of shapes {a.xxt.shape} and {b.xxt.shape}")
    return InputStats(a.xxt + b.xxt, a.xsum + b.xsum, a.count + b.count)


def merge_into(total: InputStats, part: InputStats) -> InputStats:
    """`merge_stats` into `total`'s own arrays (no new cols x cols sums per batch: for a layer
    of 8192 inputs each is 512 MiB); `total` must not be shared."""
    if total.xxt.shape != part.xxt.shape:
        raise ValueError(f"cannot merge input statistics of shapes {total.xxt.shape} and {part.xxt.shape}")
    xxt, xsum = total.xxt, total.xsum  # the frozen dataclass's arrays, added to in place
    xxt += part.xxt
    xsum += part.xsum
    return InputStats(xxt, xsum, total.count + part.count)


def column_stats(columns: Iterable[np.ndarray]) -> InputStats:
    """Statistics of column matrices [groups, cols, n] (chunks of one layer's columns).

    >>> s = column_stats([np.array([[[1.0, 2.0], [0.0, 1.0]]])])
    >>> s.hessian().tolist(), s.mean.tolist(), s.count
    ([[5.0, 2.0], [2.0, 1.0]], [[1.5, 0.5]], 2)
    """
    xxt = xsum = None
    count = 0
    for chunk in columns:
        c = np.asarray(chunk, dtype=np.float64)
        if xxt is None:
            xxt, xsum = np.zeros((c.shape[0], c.shape[1], c.shape[1])), np.zeros(c.shape[:2])
        xxt += np.matmul(c, c.transpose(0, 2, 1))
        xsum += c.sum(axis=2)
        count += c.shape[2]
    if xxt is None:
        raise ValueError("no columns to take statistics of")
    return InputStats(xxt, xsum, count)


def matmul_stats(x: np.ndarray, feature_axis: int = -1, max_elements: int = MAX_ELEMENTS) -> InputStats:
    """Statistics of a MatMul/Gemm activation: `feature_axis` is the contracted one, the rest flatten."""
    x = np.asarray(x)
    flat = np.moveaxis(x, feature_axis, -1).reshape(-1, x.shape[feature_axis])
    rows = max(1, max_elements // max(flat.shape[1], 1))
    return column_stats(flat[lo:lo + rows].T[None] for lo in range(0, max(flat.shape[0], 1), rows))


def conv_stats(x: np.ndarray, geometry: ConvGeometry, max_elements: int = MAX_ELEMENTS) -> InputStats:
    """Statistics of a Conv input x [N, C, *spatial]: one Hessian per group (im2col columns)."""
    return column_stats(conv_columns(x, geometry, max_elements))


def accumulate_stats(batches: Iterable[np.ndarray], geometry: ConvGeometry | None = None,
                     feature_axis: int = -1) -> InputStats:
    """Statistics over all batches of a layer's input (Conv when `geometry` is given)."""
    total = None
    for batch in batches:
        part = conv_stats(batch, geometry) if geometry is not None else matmul_stats(batch, feature_axis)
        total = part if total is None else merge_into(total, part)
    if total is None:
        raise ValueError("no batches to take statistics of")
    return total


def im2col(x: np.ndarray, kernel_shape: tuple[int, ...], strides: tuple[int, ...] | None = None,
           pads: tuple[int, ...] | None = None, dilations: tuple[int, ...] | None = None,
           groups: int = 1) -> np.ndarray:
    """Per-group column matrices [groups, C/g·prod(kernel), N·prod(output)] of x [N, C, *spatial].

    Columns run sample-major, then output positions in C order; rows follow the
    weight reshaped to [O, C/g·prod(kernel)], so conv(x)[n, o] = W_g @ cols[g].

    >>> im2col(np.arange(4.0).reshape(1, 1, 4), (2,), strides=(2,)).tolist()
    [[[0.0, 2.0], [1.0, 3.0]]]
    """
    geometry = ConvGeometry(tuple(kernel_shape), tuple(strides or ()), tuple(pads or ()),
                            tuple(dilations or ()), groups)
    x = np.asarray(x)
    _check_input(x, geometry)
    return _unpadded_columns(_pad(x, geometry), _without_pads(geometry))


def conv_columns(x: np.ndarray, geometry: ConvGeometry, max_elements: int = MAX_ELEMENTS):
    """The im2col columns of x in chunks of about `max_elements`: samples, or output rows of one sample."""
    x = np.asarray(x)
    _check_input(x, geometry)
    out = geometry.output_shape(x.shape[2:])
    per_sample = x.shape[1] * geometry.kernel_size * math.prod(out)
    samples = max(1, max_elements // per_sample)
    bare = _without_pads(geometry)
    for lo in range(0, x.shape[0], samples):
        padded = _pad(x[lo:lo + samples], geometry)
        if per_sample <= max_elements or out[0] == 1:
            yield _unpadded_columns(padded, bare)
            continue
        rows = max(1, out[0] * max_elements // per_sample)
        s, span = geometry.strides[0], geometry.dilations[0] * (geometry.kernel_shape[0] - 1) + 1
        for r0 in range(0, out[0], rows):
            r1 = min(r0 + rows, out[0])
            yield _unpadded_columns(padded[:, :, r0 * s:(r1 - 1) * s + span], bare)


def _check_input(x: np.ndarray, geometry: ConvGeometry) -> None:
    if x.ndim != geometry.rank + 2 or x.shape[1] % geometry.groups:
        raise ValueError(f"conv input of shape {x.shape} does not fit {geometry}")


def _without_pads(geometry: ConvGeometry) -> ConvGeometry:
    return ConvGeometry(geometry.kernel_shape, geometry.strides, (), geometry.dilations, geometry.groups)


def _pad(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    r = geometry.rank
    if not any(geometry.pads):
        return x
    widths = [(0, 0), (0, 0)] + [(geometry.pads[i], geometry.pads[i + r]) for i in range(r)]
    return np.pad(x, widths)


def _unpadded_columns(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """im2col of an already padded x: one strided slice per kernel offset."""
    n, c = x.shape[:2]
    out = geometry.output_shape(x.shape[2:])
    patches = np.empty((n, c, geometry.kernel_size) + out, dtype=x.dtype)
    for k, offset in enumerate(np.ndindex(*geometry.kernel_shape)):
        window = tuple(slice(o * d, o * d + (size - 1) * s + 1, s) for o, d, s, size
                       in zip(offset, geometry.dilations, geometry.strides, out))
        patches[:, :, k] = x[(slice(None), slice(None)) + window]
    g = geometry.groups
    grouped = patches.reshape(n, g, c // g * geometry.kernel_size, math.prod(out))
    return grouped.transpose(1, 2, 0, 3).reshape(g, c // g * geometry.kernel_size, n * math.prod(out))


def row_errors(delta: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
    """Per-row output error δ_r H δ_rᵀ of δ = W − Ŵ [rows, cols].

    H is [cols, cols], one per row [rows, cols, cols], or None (= I).

    Computed in the precision of δ and H (float32 for both: a fast estimate).

    >>> row_errors(np.array([[1.0, -1.0]]), np.array([[2.0, 1.0], [1.0, 2.0]])).tolist()
    [2.0]
    """
    delta = np.asarray(delta)
    if not np.issubdtype(delta.dtype, np.floating):
        delta = delta.astype(np.float64)
    if hessian is None:
        return np.einsum("rc,rc->r", delta, delta)
    if hessian.ndim == 3:
        return np.einsum("rc,rcd,rd->r", delta, hessian, delta, optimize=True)
    return np.einsum("rc,rc->r", delta @ hessian, delta)


def output_error(delta: np.ndarray, hessian: np.ndarray | None) -> float:
    """tr(δ H δᵀ) in float64: the summed squared output error of a weight change δ on the columns."""
    hessian = None if hessian is None else np.asarray(hessian, np.float64)
    return float(row_errors(np.asarray(delta, np.float64), hessian).sum())
