"""Per-layer Laplace statistics (METHODS.md §2a).

The zero-mean Laplace MLE of the scale is mean|w|; the goodness of fit is the
Kolmogorov–Smirnov distance between |w| and the exponential law it implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from .quant import BLOCK

_KS_SAMPLE = 1 << 20


@dataclass(frozen=True)
class LaplaceFit:
    scale: float
    ks: float  # 0 = perfect fit, 1 = none


def laplace_scale(w: np.ndarray) -> float:
    """The zero-mean Laplace MLE of the scale, mean|w|, what OPQ solves with; summed in float64
    (numpy's float32 sums take a CPU-dependent order, and overflow near float32's limit).

    >>> laplace_scale(np.array([1.0, -3.0]))
    2.0
    >>> laplace_scale(np.full(4, 3e38, np.float32)) == float(np.float32(3e38))
    True
    """
    if not w.size:
        return 0.0
    return float(np.abs(w).mean(dtype=np.float64))


def laplace_fit(w: np.ndarray) -> LaplaceFit:
    """Fit a zero-mean Laplace law to the weights `w` (float64 temporaries of one block)."""
    flat = np.asarray(w).ravel()
    scale = float(pairwise_sum(flat.size, lambda lo, hi: np.abs(flat[lo:hi].astype(np.float64))) / flat.size
                  ) if flat.size else 0.0
    if scale == 0.0:
        return LaplaceFit(0.0, 1.0)
    if flat.size > _KS_SAMPLE:  # deterministic thinning keeps the KS cost bounded
        flat = flat[:: flat.size // _KS_SAMPLE + 1]
    ks = stats.kstest(np.abs(flat.astype(np.float64)), "expon", args=(0.0, scale)).statistic
    return LaplaceFit(scale, float(ks))


def pairwise_sum(n: int, terms: Callable[[int, int], np.ndarray]) -> np.floating:
    """`np.add.reduce` of the n terms (`terms(lo, hi)` gives terms lo..hi), bit for bit, one block
    of terms at a time: numpy sums a contiguous array pairwise, halves split at a multiple of 8.

    >>> x = np.random.default_rng(0).random(300_001)
    >>> bool(pairwise_sum(x.size, lambda lo, hi: x[lo:hi]) == np.add.reduce(x))
    True
    """
    if n <= BLOCK:
        return np.add.reduce(terms(0, n))
    half = n // 2 - (n // 2) % 8
    return pairwise_sum(half, terms) + pairwise_sum(n - half, lambda lo, hi: terms(half + lo, half + hi))


def laplace_prune_fraction(threshold: float, scale: float) -> float:
    """Fraction of a Laplace(scale) layer with |w| <= threshold: 1 - exp(-s/τ)."""
    return float(-np.expm1(-threshold / scale)) if scale > 0 else 1.0


def laplace_prune_error(threshold: float, scale: float, size: int) -> float:
    """Expected sum of squares of the pruned weights: N τ² [2 − e^{−u}(u²+2u+2)], u = s/τ."""
    u = threshold / scale
    return float(size * scale**2 * (2 - np.exp(-u) * (u * u + 2 * u + 2)))
