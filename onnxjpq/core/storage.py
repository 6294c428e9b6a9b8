"""Storage accounting: the bits a layer's codes take, as the reported rates count them (METHODS.md §1).

rate         = 32·params / Σ_i V_i             (the ANNC/OPQ tables' convention)
storage_rate = 32·params / Σ_i (V_i + I_i + P_i) (also the sparsity pattern and steps)

V_i are the value bits (kept weights at their channel's packed width
⌈log2(2m+1)⌉), I_i the cheaper of a bitmask and a relative index with the
best run width r, P_i = 32 (the step) + 4 per channel (its width). Weights a
selection left in float count 32 bits each, so the rates stay honest.
"""

from __future__ import annotations

import numpy as np

from .quant import blocks, code_width, to_channels


def index_bits(nonzero_mask: np.ndarray, value_width: float) -> int:
    """Bits to store which weights are kept: bitmask or relative index, whichever is cheaper."""
    flat = nonzero_mask.ravel()
    n, kept = flat.size, int(flat.sum())
    if kept == n or kept == 0:
        return 0
    fillers, last = [0] * 9, -1  # fillers[r]: Σ runs >> r, a block of positions at a time
    for lo, hi in blocks(n):
        positions = np.flatnonzero(flat[lo:hi]) + lo
        if positions.size:
            runs = np.diff(positions, prepend=last) - 1
            last = int(positions[-1])
            for r in range(1, 9):
                fillers[r] += int((runs >> r).sum())
    best = n
    for r in range(1, 9):
        best = min(best, int(np.ceil((kept + fillers[r]) * r + fillers[r] * value_width)))
    return best


def entropy_bits(n: int, kept: int) -> float:
    """The entropy bound n·H(kept/n) on any index of the kept positions."""
    p = kept / n if n else 0.0
    if p in (0.0, 1.0):
        return 0.0
    return float(n * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)))


def storage_bits(codes: np.ndarray, axis: int | None, groups: int = 1,
                 per_channel_steps: bool = False) -> tuple[int, int, int]:
    """(value, index, parameter) bits of a layer's codes, as storage_rate counts them.

    Values are the non-zeros at their channel's width. When storing every code,
    zeros included, is cheaper than an index of the non-zeros, the index bits
    are the zeros' share of that dense storage.
    """
    nz = codes != 0
    chan_codes = to_channels(codes, axis, groups)
    widths = code_width(np.maximum(chan_codes.max(axis=1), -chan_codes.min(axis=1)))  # max |code|
    value_bits = int((to_channels(nz, axis, groups).sum(axis=1) * widths).sum())
    dense_bits = int(chan_codes.shape[1] * widths.sum())
    nonzero = int(nz.sum())
    index = index_bits(nz, value_bits / nonzero if nonzero else 0.0)
    steps = 32 * chan_codes.shape[0] if per_channel_steps else 32
    return value_bits, min(index, dense_bits - value_bits), steps + 4 * chan_codes.shape[0]
