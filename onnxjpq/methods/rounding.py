"""Rounding where error compensation has no room: MSE grid and learned rounding (METHODS.md §7d).

Depthwise convolutions (one k·k Hessian per channel) and other layers with few
inputs per output (cols ≤ ~16) give GPTQ almost nothing to spread error over.
Each row r (output channel, Hessian H_r) is then solved on its own for

    min_q  e_rᵀ H_r e_r,   e_r = w_r − s_r q_r,   q integer, |q| ≤ m.

(a) Grid: s_r = c·max|w_r|/m with the clip ratio c minimising the RTN error
    under H_r (weight MSE with H = I); `quantize_mse_grid` is RTN on it.
(b) AdaRound on the same grid: q = ⌊x⌋ + h(V), x = clip(w/s, −m, m), with the
    rectified sigmoid h(V) = clip(σ(V)(ζ−γ)+γ, 0, 1), ζ = 1.1, γ = −0.1, V
    started at h(V) = x − ⌊x⌋ (RTN). Adam on V minimises
    Σ_r [e_rᵀ H_r e_r / E_rtn,r + λ·mean_j(1 − |2h_rj−1|^β)] (each row against its
    own RTN error E_rtn,r, λ = 3), β annealed from 20 to 2
    after a warm-up without the regulariser. Full-batch on H (no sampling): the
    result is deterministic. Every few steps the hard rounding ⌊x⌋ + [h ≥ ½] is
    scored and each row keeps its best (RTN included), then a greedy descent
    moves single codes by ±1 while that lowers the row's error
    (Δ = −2sδ(H e)_j + s²δ²H_jj), so the result is never worse than RTN.
`solve_rounding` runs both and returns the one of lower output error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxjpq.core.hessian import row_errors
from onnxjpq.methods.gptq import (CLIP_RATIOS, QuantizedLayer, choose_steps, max_code_for_bits, quantized_layer,
                                  rtn_codes, stored_error)

_ZETA, _GAMMA = 1.1, -0.1
_CHECK_EVERY = 20  # Adam steps between scorings of the hard rounding
_ADAM = (0.9, 0.999, 1e-8)


@dataclass(frozen=True)
class RoundingConfig:
    """Settings of the per-row rounding solves.

    bits / max_code: codes |q| ≤ 2^(bits−1) − 1, or ≤ max_code when given.
    per_channel: one step per row, else one for the layer.
    iterations: Adam steps of AdaRound (0: grid and greedy descent only).
    learning_rate: Adam's step on the logits V.
    reg_weight: λ of the rounding regulariser; warmup: fraction of steps without it.
    """

    bits: int = 4
    max_code: int | None = None
    per_channel: bool = True
    iterations: int = 1000
    learning_rate: float = 0.05
    reg_weight: float = 3.0
    warmup: float = 0.2
    clip_ratios: tuple[float, ...] = CLIP_RATIOS

    def __post_init__(self):
        if self.max_code is None and not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {self.bits}")
        if self.max_code is not None and self.max_code < 1:
            raise ValueError(f"max_code must be at least 1, got {self.max_code}")
        if self.iterations < 0 or self.learning_rate <= 0 or self.reg_weight < 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"bad AdaRound schedule: {self}")
        if not self.clip_ratios or not all(0 < r <= 1 for r in self.clip_ratios):
            raise ValueError(f"clip ratios must be in (0, 1], got {self.clip_ratios}")

    @property
    def code_max(self) -> int:
        return self.max_code if self.max_code is not None else max_code_for_bits(self.bits)


def quantize_mse_grid(w: np.ndarray, hessian: np.ndarray | None,
                      config: RoundingConfig = RoundingConfig()) -> QuantizedLayer:
    """RTN on the per-row grid of least output error under H ([cols, cols], [rows, cols, cols], None = I).

    >>> r = quantize_mse_grid(np.array([[1.0, 0.45, 0.45, -0.45]]), None, RoundingConfig(bits=2))
    >>> r.codes.tolist(), round(float(r.steps[0]), 2)
    ([[1, 1, 1, -1]], 0.58)
    """
    w, hessian = _inputs(w, hessian)
    m = config.code_max
    steps = choose_steps(w, hessian, m, config.per_channel, config.clip_ratios)
    codes = rtn_codes(w, steps, m)
    return quantized_layer(w, hessian, codes, steps, m, stored_error(w, codes, steps, hessian), "mse-grid")


def solve_adaround(w: np.ndarray, hessian: np.ndarray | None,
                   config: RoundingConfig = RoundingConfig()) -> QuantizedLayer:
    """Learned up/down rounding on the MSE grid, then greedy ±1 descent; never worse than its RTN."""
    w, hessian = _inputs(w, hessian)
    m = config.code_max
    steps = choose_steps(w, hessian, m, config.per_channel, config.clip_ratios)
    rtn = rtn_codes(w, steps, m)
    codes = _learn(w, steps, rtn, hessian, m, config) if config.iterations else rtn
    codes = _descend(w, steps, codes, hessian, m)
    return quantized_layer(w, hessian, codes, steps, m, stored_error(w, rtn, steps, hessian), "adaround")


def solve_rounding(w: np.ndarray, hessian: np.ndarray | None,
                   config: RoundingConfig = RoundingConfig()) -> QuantizedLayer:
    """`quantize_mse_grid` and `solve_adaround`, whichever has the lower output error (the grid on ties)."""
    grid, learned = quantize_mse_grid(w, hessian, config), solve_adaround(w, hessian, config)
    return learned if learned.error < grid.error else grid


def _inputs(w, hessian):
    w = np.asarray(w, np.float64)
    if hessian is None:
        return w, None
    h = np.asarray(hessian, np.float64)
    if w.ndim != 2 or h.shape not in ((w.shape[1],) * 2, (w.shape[0],) + (w.shape[1],) * 2):
        raise ValueError(f"weight {w.shape} and Hessian {h.shape} do not match")
    return w, h


def _times_h(e: np.ndarray, hessian: np.ndarray | None) -> np.ndarray:
    """H_r e_r for every row: [rows, cols]."""
    if hessian is None:
        return e
    return e @ hessian if hessian.ndim == 2 else np.einsum("rc,rcd->rd", e, hessian)


def _learn(w, steps, rtn, hessian, m, config):
    """AdaRound's Adam on the logits, keeping each row's best hard rounding (RTN first)."""
    s = steps[:, None]
    x = np.clip(w / np.where(s > 0, s, 1.0), -m, m) * (s > 0)
    base = np.minimum(np.floor(x), m - 1)
    rest = np.clip(x - base, 1e-6, 1 - 1e-6)
    v = -np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)
    best, best_err = rtn.astype(np.float64), row_errors(w - rtn * s, hessian)
    norm = np.maximum(best_err, np.finfo(float).tiny)[:, None]  # each row's RTN error: rows weigh alike
    first, second = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = _ADAM
    warm = int(config.warmup * config.iterations)
    for t in range(1, config.iterations + 1):
        sig = 1 / (1 + np.exp(-v))
        raw = sig * (_ZETA - _GAMMA) + _GAMMA
        h = np.clip(raw, 0, 1)
        grad_h = -2 * s * _times_h(w - s * (base + h), hessian) / norm
        if t > warm:
            beta = 20 + (2 - 20) * (t - warm) / max(config.iterations - warm, 1)
            d = 2 * h - 1
            grad_h -= config.reg_weight * 2 * beta * np.abs(d) ** (beta - 1) * np.sign(d) / w.shape[1]
        grad = grad_h * (_ZETA - _GAMMA) * sig * (1 - sig) * ((raw > 0) & (raw < 1))
        first = b1 * first + (1 - b1) * grad
        second = b2 * second + (1 - b2) * grad * grad
        v -= config.learning_rate * (first / (1 - b1 ** t)) / (np.sqrt(second / (1 - b2 ** t)) + eps)
        if t % _CHECK_EVERY == 0 or t == config.iterations:
            hard = base + (h >= 0.5)
            err = row_errors(w - hard * s, hessian)
            better = err < best_err
            best[better], best_err[better] = hard[better], err[better]
    return best.astype(np.int32)


def _descend(w, steps, codes, hessian, m, max_moves_per_col=4):
    """Greedy descent: per row, the single ±1 code move of largest error decrease, while one decreases it."""
    s = steps[:, None]
    q = codes.astype(np.float64)
    g = _times_h(w - q * s, hessian)  # H e per row
    diag = np.ones(w.shape) if hessian is None else np.broadcast_to(np.diagonal(hessian, axis1=-2, axis2=-1), w.shape)
    rows = np.arange(w.shape[0])
    for _ in range(max_moves_per_col * w.shape[1]):
        up = np.where(q < m, -2 * s * g + s * s * diag, np.inf)
        down = np.where(q > -m, 2 * s * g + s * s * diag, np.inf)
        gains = np.concatenate([up, down], axis=1)
        pick = np.argmin(gains, axis=1)
        gain = gains[rows, pick]
        move = gain < -1e-12 * np.abs(g * s).sum(axis=1)  # a strict decrease beyond rounding noise
        if not move.any():
            break
        r, j = rows[move], pick[move] % w.shape[1]
        delta = np.where(pick[move] < w.shape[1], 1.0, -1.0)
        q[r, j] += delta
        column = np.eye(w.shape[1])[j] if hessian is None else (hessian[j] if hessian.ndim == 2 else hessian[r, j])
        g[r] -= (steps[r] * delta)[:, None] * column
    return q.astype(np.int32)
