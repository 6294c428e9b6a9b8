"""Per-layer Laplace statistics (METHODS.md §2a).

The zero-mean Laplace MLE of the scale is mean|w|; the goodness of fit is the
Kolmogorov–Smirnov distance between |w| and the exponential law it implies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

_KS_SAMPLE = 1 << 20


@dataclass(frozen=True)
class LaplaceFit:
    scale: float
    ks: float  # 0 = perfect fit, 1 = none


def laplace_scale(w: np.ndarray) -> float:
    """The zero-mean Laplace MLE of the scale, mean|w| (in w's precision), what OPQ solves with.

    >>> laplace_scale(np.array([1.0, -3.0]))
    2.0
    """
    return float(np.abs(w).mean()) if w.size else 0.0


def laplace_fit(w: np.ndarray) -> LaplaceFit:
    """Fit a zero-mean Laplace law to the weights `w`."""
    a = np.abs(np.asarray(w, dtype=np.float64).ravel())
    scale = float(a.mean()) if a.size else 0.0
    if scale == 0.0:
        return LaplaceFit(0.0, 1.0)
    if a.size > _KS_SAMPLE:  # deterministic thinning keeps the KS cost bounded
        a = a[:: a.size // _KS_SAMPLE + 1]
    ks = stats.kstest(a, "expon", args=(0.0, scale)).statistic
    return LaplaceFit(scale, float(ks))


def laplace_prune_fraction(threshold: float, scale: float) -> float:
    """Fraction of a Laplace(scale) layer with |w| <= threshold: 1 - exp(-s/τ)."""
    return float(-np.expm1(-threshold / scale)) if scale > 0 else 1.0


def laplace_prune_error(threshold: float, scale: float, size: int) -> float:
    """Expected sum of squares of the pruned weights: N τ² [2 − e^{−u}(u²+2u+2)], u = s/τ."""
    u = threshold / scale
    return float(size * scale**2 * (2 - np.exp(-u) * (u * u + 2 * u + 2)))
