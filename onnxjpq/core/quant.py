"""Pure quantization primitives: step → codes → dequantized values.

Symmetric, zero point 0, one step per tensor (OPQ's shared step, METHODS.md
§2c). Rounding is half away from zero, not numpy's half to even.
"""

from __future__ import annotations

import numpy as np

CONTAINER_MAX = {"int4": 7, "int8": 127, "int16": 32767}


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero.

    >>> round_half_away(np.array([0.5, 1.5, -0.5, 2.4])).tolist()
    [1.0, 2.0, -1.0, 2.0]
    """
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_codes(w: np.ndarray, mask: np.ndarray, step: float | np.ndarray,
                   keep_survivors: bool = True, max_code: int | None = None) -> np.ndarray:
    """Integer codes of `w` on the grid `step`; pruned weights (mask False) get 0.

    With `keep_survivors`, a kept weight that would round to 0 gets ±1 instead,
    so the prune ratio asked for is the ratio stored. `max_code` clips the
    codes (a clipped range trades the largest weights' error for finer steps).
    A large C-ordered `w` is done in blocks (float64 temporaries of one block).

    >>> quantize_codes(np.array([0.1, -0.26, 0.9]), np.array([True, True, False]), 0.2).tolist()
    [1, -1, 0]
    """
    step = np.asarray(step, dtype=np.float64)
    if not blockable(w, mask):
        return _codes(w, mask, step, keep_survivors, max_code)
    return blockwise(lambda *parts: _codes(*parts, keep_survivors, max_code), np.int32, w, mask, step)


def _codes(w: np.ndarray, mask: np.ndarray, step: np.ndarray, keep_survivors: bool,
           max_code: int | None) -> np.ndarray:
    positive = step > 0
    q = np.floor(np.abs(w) / np.where(positive, step, 1.0) + 0.5)
    if keep_survivors:
        q = np.maximum(q, 1.0)
    if max_code is not None:
        q = np.minimum(q, max_code)
    return (np.sign(w) * q * mask * positive).astype(np.int32)


BLOCK = 1 << 16  # elements per block where a large layer is done in blocks


def blocks(n: int, size: int = BLOCK):
    """(lo, hi) ranges of `size` covering range(n)."""
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def blockable(*arrays) -> bool:
    """Same-shaped C-ordered arrays past one block: elementwise work on their flat views
    in blocks gives what it gives on the whole arrays, in the same layout."""
    first = arrays[0]
    return (all(isinstance(a, np.ndarray) and a.shape == first.shape and a.flags.c_contiguous for a in arrays)
            and first.size > BLOCK)


def blockwise(fn, dtype, w: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """`fn(w, *others)` for an elementwise `fn` and a C-ordered `w`, one block of weights at
    a time, into a new C-ordered array of `dtype` (`others` broadcast to w's shape)."""
    out = np.empty(w.shape, dtype)
    flat_w, flat_out = w.reshape(-1), out.reshape(-1)
    for lo, hi in blocks(w.size):
        flat_out[lo:hi] = fn(flat_w[lo:hi], *(flat_range(o, w.shape, lo, hi) for o in others))
    return out


def flat_range(a: np.ndarray, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    """Elements lo..hi (C order) of `a` broadcast to `shape`, without the broadcast copy.

    >>> flat_range(np.array([[1], [2]]), (2, 3), 2, 5).tolist()
    [1, 2, 2]
    """
    if a.shape == tuple(shape) and a.flags.c_contiguous:
        return a.reshape(-1)[lo:hi]
    if a.size == 1:
        return a.reshape(1)
    return np.broadcast_to(a, shape)[np.unravel_index(np.arange(lo, hi), shape)]


def dequantize(codes: np.ndarray, step: float | np.ndarray) -> np.ndarray:
    """Float values of `codes` (what DequantizeLinear computes); `step` may broadcast per channel."""
    return (codes.astype(np.float32) * np.asarray(step, dtype=np.float32)).astype(np.float32)


def code_width(max_code: np.ndarray) -> np.ndarray:
    """Bits of a symmetric code in [-m, m] packed at its own width: ceil(log2(2m+1)); 0 if m = 0.

    >>> code_width(np.array([0, 1, 3, 4, 7, 8, 127])).tolist()
    [0, 2, 3, 4, 4, 5, 8]
    """
    m = np.asarray(max_code, dtype=np.int64)
    return np.where(m > 0, np.ceil(np.log2(2 * m + 1)), 0).astype(np.int64)


def container_for(max_code: int, allow_int4: bool) -> str:
    """The smallest ONNX integer type that holds codes in [-max_code, max_code]."""
    if allow_int4 and max_code <= CONTAINER_MAX["int4"]:
        return "int4"
    if max_code <= CONTAINER_MAX["int8"]:
        return "int8"
    return "int16"


def to_channels(w: np.ndarray, axis: int | None, groups: int = 1) -> np.ndarray:
    """View `w` as [output channels, weights per channel].

    `axis` None means one channel (per-tensor). `groups` > 1 applies to
    ConvTranspose, whose weight [C, M/g, ...] has output channel g_index·M/g + m.
    """
    if axis is None or w.ndim == 0:
        return w.reshape(1, -1)
    if groups > 1 and axis == 1:
        c_in, m_per_group = w.shape[0], w.shape[1]
        grouped = w.reshape(groups, c_in // groups, m_per_group, -1)
        return grouped.transpose(0, 2, 1, 3).reshape(groups * m_per_group, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def magnitude_mask(w: np.ndarray, n_pruned: int) -> np.ndarray:
    """Mask that prunes the `n_pruned` smallest |w|, ties broken by flat index.

    What a stable argsort of |w| gives, from a partition that finds the largest
    pruned |w| and one pass over blocks of weights (no int64 per weight).

    >>> magnitude_mask(np.array([0.3, -0.1, 0.1, 0.2]), 2).tolist()
    [True, False, False, True]
    """
    n_pruned = min(n_pruned, w.size)
    if n_pruned <= 0:
        return np.ones(w.shape, bool)
    part = np.abs(w).ravel()
    part.partition(n_pruned - 1)
    kth = part[n_pruned - 1]
    del part
    flat, mask = w.ravel(), np.empty(w.size, bool)
    below, ties = 0, []
    for lo, hi in blocks(flat.size):
        a = np.abs(flat[lo:hi])
        mask[lo:hi] = a > kth
        below += int((a < kth).sum())
        ties.append(np.flatnonzero(a == kth) + lo)
    ties = np.concatenate(ties)
    mask[ties[n_pruned - below:]] = True  # the last ties by flat index stay
    return mask.reshape(w.shape)
