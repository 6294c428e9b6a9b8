"""The clipping range of a uniform activation quantizer that minimises its mean squared error.

For an asymmetric quantizer with `levels` codes over [lo, hi] (lo <= 0 <= hi, as onnxruntime
widens every range to hold zero), step s = (hi − lo)/(levels − 1), a value x costs

    (x − lo)²  below lo,   (x − hi)²  above hi,   s²/12  inside

(the rounding error of a value spread evenly over its step). Summed over a histogram of the
tensor's calibration values this is the classic clipping trade-off: a narrower range clips the
few large values but rounds the many small ones more finely. `mse_range` searches shrink factors
of both ends of the observed range on a grid and returns the cheapest; the observed range itself
is a candidate, so the result never costs more than min/max calibration by this measure.
"""

from __future__ import annotations

import numpy as np

SHRINK = np.linspace(0.02, 1.0, 50)  # fractions of the observed end kept, 1.0 = no clipping


def clipping_mse(counts: np.ndarray, centers: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 levels: int = 256) -> np.ndarray:
    """Mean squared quantization error of the histogram (`counts` at `centers`) for each
    candidate range lo[i], hi[i] (broadcast against each other).

    >>> float(clipping_mse(np.array([1.0]), np.array([0.5]), np.array(0.0), np.array(1.0), levels=2)[()])
    0.08333333333333333
    """
    lo, hi = np.broadcast_arrays(np.minimum(np.asarray(lo, np.float64), 0.0),
                                 np.maximum(np.asarray(hi, np.float64), 0.0))
    lo_, hi_ = lo[..., None], hi[..., None]
    step = (hi_ - lo_) / (levels - 1)
    inside = (centers >= lo_) & (centers <= hi_)
    cost = np.where(inside, step**2 / 12, np.where(centers < lo_, (centers - lo_) ** 2, (centers - hi_) ** 2))
    total = counts.sum() or 1.0
    return (cost * counts).sum(axis=-1) / total


def mse_range(counts: np.ndarray, edges: np.ndarray, levels: int = 256) -> tuple[float, float]:
    """The range [lo, hi] of least `clipping_mse` for a histogram with bin `edges`; the ends are
    the observed ones (edges[0], edges[-1], widened to hold zero) shrunk by factors in SHRINK.

    >>> lo, hi = mse_range(np.array([1000, 0, 0, 1]), np.array([0.0, 1.0, 2.0, 3.0, 100.0]))
    >>> 0 <= lo and hi < 100
    True
    """
    counts, edges = np.asarray(counts, np.float64), np.asarray(edges, np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    low, high = min(float(edges[0]), 0.0), max(float(edges[-1]), 0.0)
    if counts.sum() == 0 or high == low:
        return low, high
    his = high * SHRINK
    cost = np.stack([clipping_mse(counts, centers, lo, his, levels) for lo in low * SHRINK])  # a row per lo
    i, j = np.unravel_index(np.argmin(cost), cost.shape)  # the first minimum: ties keep the narrower range
    return float(low * SHRINK[i]), float(his[j])
