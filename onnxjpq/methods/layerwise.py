"""One layer's data-aware solve, whatever its grouping, and estimates of its options (METHODS.md §7).

A layer is a matrix W [rows, cols] whose rows fall into Hessian groups
(`LayerHessians`: H_g = X_g X_gᵀ per group; one group for MatMul/Gemm, one per
Conv group, one per direction for a recurrent R). The solvers of this package
take one H ([cols, cols]) or one per row ([rows, cols, cols]); `solve_layer`
dispatches:

- "gptq": GPTQ / SparseGPT (methods.gptq) per group; layers with few inputs per
  output (cols ≤ `small_cols`, e.g. depthwise 3×3) are solved without pruning by
  methods.rounding (MSE grid or AdaRound, whichever measures better), which
  takes one H per row, so all groups at once. At half the weights pruned or
  more, or ternary codes, RTN on the same option is solved too and kept where it
  measures better (SparseGPT can lose to it there).
- "rtn": round to nearest on the grid of least output error, magnitude pruning
  per row (no compensation): the baseline the solvers are measured against.
- no Hessians: the data-free solve, RTN on the grid of least weight error.

Errors are tr((W−Ŵ) H (W−Ŵ)ᵀ) summed over groups; relative ones divide by
tr(W H Wᵀ). A per-layer grid (one step) is only possible where one solve sees
every row: with several groups GPTQ gets per-channel steps.

`estimate_options` scores many (bits, sparsity, grid) options of a layer for the
budget allocation without solving them: on a sample of rows, the RTN and pruning
errors weighted per input by what is left of them after compensation (GPTQ's
error on column j is δ_j² = e_j²/U_jj², U the Cholesky factor of H⁻¹; H_jj where
nothing compensates). Exact solves of the sample (`OptionEstimates.anchor`)
can replace an option's estimate and rescale its sparsity's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import linalg

from ..core.quant import code_width, magnitude_mask
from .gptq import (GptqConfig, QuantizedLayer, choose_steps, inverse_cholesky_upper, quantized_layer,
                   row_magnitude_keep, rtn_codes, solve_gptq, stored_error)
from .rounding import RoundingConfig, solve_rounding

SOLVERS = ("gptq", "rtn")
SMALL_COLS = 16
ACT_ORDER = True  # GPTQ sweeps columns by decreasing H_jj (better held-out fidelity on MiniLM)
PRUNE_PENALTY = 4.0  # weight of the estimated pruning error in the allocation (see estimate_options)
TARGET_DAMP = 0.1  # λ of the fp32 target's (Ĥ + λ·mean(diag Ĥ)·I)⁻¹
PROXY_ROWS = 64
PROXY_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class LayerOption:
    """Codes |q| ≤ max_code, the fraction of each row pruned, one step per row or per layer."""

    max_code: int
    sparsity: float = 0.0
    per_channel: bool = True

    @property
    def bits(self) -> int:
        return int(code_width(np.array(self.max_code)))


@dataclass(frozen=True)
class LayerHessians:
    """H per group [groups, cols, cols] (float64) and each row's group."""

    hessians: np.ndarray
    row_group: np.ndarray
    count: int = 0  # columns (samples × positions) each group's H sums; 0: unknown
    damp: float | None = None  # GPTQ's λ (None: `gptq_damp`)

    def subset(self, rows: np.ndarray) -> "LayerHessians":
        return LayerHessians(self.hessians, self.row_group[rows], self.count, self.damp)

    def per_row(self) -> np.ndarray:
        return self.hessians[self.row_group]

    @property
    def diagonal(self) -> np.ndarray:
        """diag H of each row's group, [rows, cols]."""
        return np.diagonal(self.hessians, axis1=1, axis2=2)[self.row_group]


def grouped(hessians: np.ndarray, rows: int, count: int = 0) -> LayerHessians:
    """Rows split evenly and in order between the groups (output channel o in group o // (rows/g))."""
    groups = hessians.shape[0]
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into {groups} groups")
    return LayerHessians(np.asarray(hessians, np.float64), np.arange(rows) // (rows // groups), count)


def solve_layer(w: np.ndarray, data: LayerHessians | None, option: LayerOption, solver: str = "gptq",
                small_cols: int = SMALL_COLS, rounding: RoundingConfig = RoundingConfig()) -> QuantizedLayer:
    """The codes and steps of W [rows, cols] for one option (see the module docstring)."""
    w = np.asarray(w, np.float64)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if data is None:
        return _rtn(w, None, option, "rtn-data-free")
    groups = np.unique(data.row_group)
    h = data.hessians[groups[0]] if len(groups) == 1 else data.per_row()
    if solver == "rtn" or (len(groups) > 1 and not option.per_channel):
        return _rtn(w, h, option, "rtn")  # one step for several groups: only RTN sees every row at once
    if w.shape[1] <= small_cols and option.sparsity == 0:
        config = RoundingConfig(max_code=option.max_code, per_channel=option.per_channel,
                                iterations=rounding.iterations)
        solved = solve_rounding(w, h, config)
    else:
        solved = _sparse_gptq(w, data, groups, option)
    if option.sparsity < 0.5 and option.max_code > 1:
        return solved
    baseline = _rtn(w, h, option, "rtn")  # heavy pruning or ternary codes: compensation can lose
    return solved if solved.error <= baseline.error else baseline


def _sparse_gptq(w: np.ndarray, data: LayerHessians, groups: np.ndarray, option: LayerOption) -> QuantizedLayer:
    """GPTQ, or SparseGPT at each row's share of the layer's magnitude-pruned weights (rows of
    like share solved together: methods.gptq prunes the same fraction of every row it is given);
    with a per-layer grid every row prunes the same fraction."""
    levels = (row_sparsities(w, option.sparsity) if option.sparsity > 0 and option.per_channel
              else np.full(w.shape[0], option.sparsity))
    parts = []
    for g in groups:
        for level in np.unique(levels[data.row_group == g]):
            rows = (data.row_group == g) & (levels == level)
            config = GptqConfig(max_code=option.max_code, sparsity=float(level), per_channel=option.per_channel,
                                act_order=ACT_ORDER, damp=0.01 if data.damp is None else data.damp)
            parts.append((rows, solve_gptq(w[rows], data.hessians[g], config)))
    return parts[0][1] if len(parts) == 1 else _joined(w, parts)


# the fractions of a row that pruning solves are rounded to (each a solve of its rows)
ROW_LEVELS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375, 0.96875, 0.984375)


def row_sparsities(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Each row's pruned fraction when the layer's smallest |w| are pruned to `sparsity` (as the
    data-free solves prune), rounded to the nearest of ROW_LEVELS.

    >>> row_sparsities(np.array([[1.0, 0.1, 0.2, 0.3], [1.0, 2.0, 3.0, 0.05]]), 0.5).tolist()
    [0.75, 0.25]
    """
    keep = magnitude_mask(np.asarray(w), int(round(sparsity * w.size)))
    share = 1.0 - keep.mean(axis=1)
    levels = np.array(ROW_LEVELS)
    return levels[np.argmin(np.abs(share[:, None] - levels[None, :]), axis=1)]


def _rtn(w, h, option: LayerOption, method: str) -> QuantizedLayer:
    """RTN on the grid of least error under h (None: weight error), magnitude pruning (over the
    layer with per-channel steps, per row with one step, as the compensated solve prunes)."""
    m = option.max_code
    keep = np.ones(w.shape, bool)
    if option.sparsity > 0:
        keep = (magnitude_mask(w, int(round(option.sparsity * w.size))) if option.per_channel
                else row_magnitude_keep(w, option.sparsity))
    steps = choose_steps(w * keep, h, m, option.per_channel)
    codes = rtn_codes(w, steps, m, keep, option.sparsity > 0)
    solved = quantized_layer(w, h, codes, steps, m, stored_error(w, codes, steps, h), method)
    return solved


def _joined(w: np.ndarray, parts: list[tuple[np.ndarray, QuantizedLayer]]) -> QuantizedLayer:
    """One result from per-group solves (rows selected by each boolean mask)."""
    codes = np.zeros(w.shape, np.int32)
    steps = np.zeros(w.shape[0], np.float32)
    dequantized = np.zeros(w.shape, np.float32)
    for rows, part in parts:
        codes[rows], steps[rows], dequantized[rows] = part.codes, part.steps, part.dequantized
    first = parts[0][1]
    return QuantizedLayer(codes, steps, dequantized, first.max_code, sum(p.error_rtn for _, p in parts),
                          sum(p.error for _, p in parts), sum(p.energy for _, p in parts), first.method)


def relative(solved: QuantizedLayer) -> tuple[float, float]:
    """(error, RTN error) relative to the layer's output energy."""
    energy = solved.energy if solved.energy > 0 else 1.0
    return solved.error / energy, solved.error_rtn / energy


# ------------------------------------------------------------------ option estimates


@dataclass
class OptionEstimates:
    """Estimated relative errors of a layer's options (the proxy, times γ(sparsity) where exact
    solves of the sample rows anchored it) and the share of kept weights whose code is 0."""

    options: list[LayerOption]
    proxy: np.ndarray  # [options]
    zeros: np.ndarray  # [options]
    sample: np.ndarray  # [sample rows, cols] of W
    data: LayerHessians | None  # the sample's Hessians
    solver: str
    small_cols: int
    anchors: dict[float, float] = field(default_factory=dict)  # sparsity -> γ
    solved: dict[int, tuple[float, float]] = field(default_factory=dict)  # option -> exact (error, zeros)

    @property
    def errors(self) -> np.ndarray:
        out = self.proxy.copy()
        if self.anchors:
            known = sorted(self.anchors)
            out *= np.interp([o.sparsity for o in self.options], known, [self.anchors[k] for k in known])
        for index, (error, _) in self.solved.items():
            out[index] = error
        return out

    @property
    def zero_shares(self) -> np.ndarray:
        out = self.zeros.copy()
        for index, (_, zeros) in self.solved.items():
            out[index] = zeros
        return out

    def anchor(self, index: int) -> bool:
        """Solve option `index` on the sample exactly (its error and zeros from now on) and, at a
        sparsity not anchored yet, anchor γ there; False if it was solved already or released."""
        if index in self.solved or self.sample.size == 0:
            return False
        option = self.options[index]
        solved = solve_layer(self.sample, self.data, option, self.solver, self.small_cols)
        exact = relative(solved)[0]
        kept = solved.codes.size - int(np.floor(option.sparsity * solved.codes.shape[1] + 0.5)) * len(solved.codes)
        self.solved[index] = (exact, float(((solved.codes == 0).sum() - (solved.codes.size - kept)) / max(kept, 1)))
        if option.sparsity not in self.anchors:
            proxy = self.proxy[index]
            self.anchors[option.sparsity] = float(np.clip(exact / proxy, 1e-3, 10.0)) if proxy > 0 else 1.0
        return True

    def release(self) -> None:
        """Drop the sample and its Hessians (no more anchors)."""
        self.sample, self.data = np.zeros((0, 0)), None


def estimate_options(w: np.ndarray, data: LayerHessians | None, options: Sequence[LayerOption],
                     solver: str = "gptq", small_cols: int = SMALL_COLS) -> OptionEstimates:
    """The proxy of every option on a sample of rows (module docstring): the RTN and pruning
    errors weighted per input by 1/U_jj² (the error GPTQ/SparseGPT leave once the rest of the
    row has compensated, U the Cholesky factor of H⁻¹), or by H_jj where nothing compensates
    (RTN, rounding of small layers), or by 1 (no data); relative to tr(W H Wᵀ).

    The pruning part is weighted by PRUNE_PENALTY: SparseGPT's error on the calibration samples
    understates its error elsewhere far more than GPTQ's does (measured on all-MiniLM-L6-v2:
    allocations that prune lose held-out cosine at the same calibration error), and at equal
    bytes quantization usually wins on small models (METHODS.md §7f)."""
    w = np.asarray(w, np.float64)
    rows = w.shape[0]
    sample_rows = np.unique(np.linspace(0, rows - 1, min(rows, PROXY_ROWS)).round().astype(int))
    ws = w[sample_rows]
    sub = None if data is None else data.subset(sample_rows)
    compensated = sub is not None and solver == "gptq" and w.shape[1] > small_cols
    weights = (np.ones(ws.shape) if sub is None else
               _compensated_weights(sub) if compensated else np.maximum(sub.diagonal, 0.0))
    energy = float((ws * ws).sum()) if sub is None else sum(
        float(((ws[sub.row_group == g] @ sub.hessians[g]) * ws[sub.row_group == g]).sum())
        for g in np.unique(sub.row_group))
    amax_layer = float(np.abs(w).max(initial=0.0))
    parts = np.array([_proxy(ws, weights, o, amax_layer, energy or 1.0) for o in options])
    return OptionEstimates(list(options), parts[:, 0] + PRUNE_PENALTY * parts[:, 1], parts[:, 2], ws, sub, solver,
                           small_cols)


def _compensated_weights(data: LayerHessians) -> np.ndarray:
    """1/U_jj² of each row's group (H damped as GPTQ damps it), [rows, cols]."""
    per_group = {}
    for g in np.unique(data.row_group):
        h = np.array(data.hessians[g], np.float64)
        dead = np.diag(h) == 0
        h[dead, dead] = 1.0
        h[np.diag_indices_from(h)] += 0.01 * np.mean(np.diag(h))
        per_group[g] = 1.0 / np.diag(inverse_cholesky_upper(h)) ** 2
    return np.stack([per_group[g] for g in data.row_group])


def _proxy(w: np.ndarray, weights: np.ndarray, option: LayerOption, amax_layer: float, energy: float
           ) -> tuple[float, float, float]:
    """(quantization, pruning) parts of Σ_rc (w − ŵ)²·weight_rc / energy for one option (pruning
    the lowest w²·weight of each row, as many per row as the solve prunes), and the share of
    kept weights whose code is 0."""
    counts = np.full(w.shape[0], int(np.floor(option.sparsity * w.shape[1] + 0.5)))
    if option.sparsity > 0 and option.per_channel:
        keep = magnitude_mask(w, int(round(option.sparsity * w.size)))
        counts = (~keep).sum(axis=1)
    saliency = w * w * weights
    order = np.argsort(saliency, axis=1, kind="stable")
    keep = np.ones(w.shape, bool)
    for r in np.flatnonzero(counts):
        keep[r, order[r, :counts[r]]] = False
    pruned = float((saliency * ~keep).sum())
    kept = np.abs(w) * keep
    amax = kept.max(axis=1) if option.per_channel else np.full(w.shape[0], amax_layer)
    m = option.max_code
    errors, zeros = [], []
    for ratio in PROXY_RATIOS:
        step = np.where(amax > 0, ratio * amax / m, 1.0)[:, None]
        q = np.minimum(np.floor(kept / step + 0.5), m)
        if option.sparsity > 0:
            q = np.maximum(q, 1.0)
        errors.append((((kept - q * step) ** 2) * weights * keep).sum(axis=1))
        zeros.append(((q == 0) & keep).sum(axis=1))
    errors, zeros = np.array(errors), np.array(zeros)
    best = np.argmin(errors, axis=0) if option.per_channel else np.full(w.shape[0], np.argmin(errors.sum(axis=1)))
    rows = np.arange(w.shape[0])
    quant, zero = errors[best, rows].sum(), zeros[best, rows].sum()
    return float(quant) / energy, pruned / energy, float(zero) / max(int(keep.sum()), 1)


# ------------------------------------------------------------------ fp32 targets (sequential capture)


def fp32_target(w: np.ndarray, data: LayerHessians, cross: np.ndarray, damp: float | None = None) -> np.ndarray:
    """W* = W + W (C − Ĥ) (Ĥ + λ·mean(diag Ĥ)·I)⁻¹ per group: with inputs x̂ (Ĥ = Σ x̂x̂ᵀ) in place
    of the fp32 x (C = Σ x x̂ᵀ), ‖WX − ŴX̂‖² = const + tr((Ŵ − W*) Ĥ (Ŵ − W*)ᵀ) (λ → 0), so solving
    for W* under Ĥ aims at the fp32 outputs; with x̂ = x it is W.

    >>> h = np.array([[[2.0, 0.0], [0.0, 2.0]]])
    >>> fp32_target(np.array([[1.0, 1.0]]), LayerHessians(h, np.zeros(1, int)), h).tolist()
    [[1.0, 1.0]]
    """
    damp = TARGET_DAMP if damp is None else damp
    out = np.array(w, np.float64)
    for g in np.unique(data.row_group):
        h = data.hessians[g]
        damped = h + damp * max(float(np.mean(np.diag(h))), 1e-30) * np.eye(h.shape[0])
        rows = data.row_group == g
        shift = np.asarray(w[rows], np.float64) @ (cross[g] - h)  # W (C − Ĥ): rows right-hand sides, not cols
        out[rows] += linalg.cho_solve(linalg.cho_factor(damped), shift.T).T
    return out


TARGET_DAMPS = (0.01, 0.03, 0.1, 0.3, 1.0)


def choose_target_damp(w: np.ndarray, fit: LayerHessians, fit_cross: np.ndarray, check: LayerHessians,
                       check_fp32: np.ndarray, check_cross: np.ndarray) -> float:
    """The λ of `fp32_target` (among TARGET_DAMPS) whose target, fitted on one set of samples,
    reproduces the fp32 outputs best on another: a ridge penalty chosen by a held-out check."""
    scores = [fp32_error(w, fp32_target(w, fit, fit_cross, damp), check_fp32, check_cross, check)[0]
              for damp in TARGET_DAMPS]
    return TARGET_DAMPS[int(np.argmin(scores))]


def fp32_error(w: np.ndarray, w_hat: np.ndarray, fp32: np.ndarray, cross: np.ndarray, data: LayerHessians
               ) -> tuple[float, float]:
    """(‖WX − ŴX̂‖², ‖WX‖²) from the groups' Σxxᵀ (`fp32`), Σxx̂ᵀ (`cross`) and Σx̂x̂ᵀ (in `data`)."""
    error = energy = 0.0
    for g in np.unique(data.row_group):
        rows = data.row_group == g
        a, b = np.asarray(w[rows], np.float64), np.asarray(w_hat[rows], np.float64)
        e = float(((a @ fp32[g]) * a).sum())
        error += e - 2 * float(((a @ cross[g]) * b).sum()) + float(((b @ data.hessians[g]) * b).sum())
        energy += e
    return max(error, 0.0), energy
