"""OPQ: one-shot pruning and quantization solved analytically (METHODS.md §2).

Pruning (§2b). Under a Laplace(τ_i) model per layer, minimising the pruning
error Σ E_i(β_i) subject to Σ P_i(β_i) = p*·N gives the stationarity condition
2N_i f_i(β_i)(β_i² − λ) = 0: one threshold s = √λ for every layer, the root of

    G(s) = Σ_i N_i (1 − e^{−s/τ_i}) − p*·N,

increasing and concave, bracketed by −τ_min·ln(1−p*) and −τ_max·ln(1−p*).
The model sets per-layer ratios p_i = 1 − e^{−s/τ_i}; the masks then prune the
k_i smallest |w| of each layer, with Σ k_i exactly round(p*·N).

Quantization (§2c). One step Δ_i per layer shared by its channels, channel j
spanning K_ij = 2α_ij/Δ_i bins. Minimising Σ Δ_i²/12 subject to the bin budget
Σ_i A_i/Δ_i = 2^{B−1}·N̄ (A_i = Σ_j N̄_ij α_ij) gives

    Δ_i = A_i^{1/3} · Σ_k A_k^{2/3} / (2^{B−1}·N̄),

with an active set for the int8 cap Δ_i ≥ max_j α_ij/127. All steps are then
scaled by one factor c, found by bisection, so the packed width of the kept
weights, mean ⌈log2(2m_ij+1)⌉, equals B (OPQ's ratios between layers kept).

The solve needs of each layer only its Laplace scale and, under its mask, the
channels' kept maxima and counts: `solve_sources` reads them through
`LayerSource`s, in memory for `solve_opq` (`ArraySource`), from the file one
layer at a time for onnxjpq.pipeline.stream.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from scipy import optimize

from ..errors import OptionError
from ..core.plan import CompressionPlan, LayerPlan, WeightArray
from ..core.quant import BLOCK, CONTAINER_MAX, blocks, code_width, magnitude_mask, to_channels  # noqa: F401
from ..core.channels import check_granularity
from ..core.stats import laplace_prune_fraction, laplace_scale


@dataclass(frozen=True)
class OpqConfig:
    """Settings of the analytic OPQ solve.

    prune: global fraction of weights to remove, in [0, 1).
    bits: average packed bits per kept weight, in [2, 8] (fractions allowed).
    prune_mode: "laplace" (OPQ's per-layer ratios) or "exact" (global magnitude).
    keep_survivors: in pruned layers, kept weights never round to 0, so the prune
        ratio is exact (a layer nothing was pruned from rounds small weights to 0).
    fit_int4: cap the codes of the largest layers at ±7 so they store as int4;
        the smaller layers take the rest of the bit budget (see `int4_caps`).
    granularity: "auto", "layer" or "channel" steps (see onnxjpq.core.channels).
    """

    prune: float = 0.0
    bits: float = 8.0
    prune_mode: str = "laplace"
    keep_survivors: bool = True
    fit_int4: bool = True
    granularity: str = "auto"
    version: int = 1

    def __post_init__(self):
        check_granularity(self.granularity)
        if not 0.0 <= self.prune < 1.0:
            raise OptionError(f"prune ratio must be in [0, 1), got {self.prune}")
        if not 2.0 <= self.bits <= 8.0:
            raise OptionError(f"bits must be in [2, 8], got {self.bits}")
        if self.prune_mode not in ("laplace", "exact"):
            raise OptionError(f"prune mode must be 'laplace' or 'exact', got {self.prune_mode!r}")


# ---------------------------------------------------------------- pruning


def solve_prune_threshold(sizes: np.ndarray, scales: np.ndarray, target: float) -> float:
    """The common threshold s with Σ N_i(1 − e^{−s/τ_i}) = target·Σ N_i."""
    sizes, scales = np.asarray(sizes, float), np.asarray(scales, float)
    if target <= 0:
        return 0.0
    if target >= 1:
        raise OptionError(f"prune ratio must be below 1, got {target}")
    total = sizes.sum()

    def g(s: float) -> float:  # libm and an exact sum: numpy's SIMD expm1 differs by CPU in the last ulp
        return -math.fsum(n * math.expm1(-s / t) for n, t in zip(sizes.tolist(), scales.tolist())) - target * total

    lo = -scales.min() * np.log1p(-target)
    hi = -scales.max() * np.log1p(-target)
    if hi <= lo or g(lo) >= 0:
        return float(lo)
    return float(optimize.brentq(g, lo, hi, xtol=1e-15 * hi, rtol=4 * np.finfo(float).eps))


def largest_remainder_counts(fractions: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """Integer counts k_i ≈ fractions_i·sizes_i, each ≤ sizes_i, summing to `total`.

    >>> largest_remainder_counts(np.array([0.5, 0.5]), np.array([10, 10]), 6).tolist()
    [3, 3]
    """
    sizes = np.asarray(sizes, np.int64)
    if not 0 <= total <= sizes.sum():
        raise ValueError(f"total {total} outside [0, {sizes.sum()}]")
    raw = np.clip(np.asarray(fractions, float), 0, 1) * sizes
    raw = raw * (total / raw.sum()) if raw.sum() > total else raw  # fractions asking too much: scale down
    counts = np.minimum(np.floor(raw).astype(np.int64), sizes)
    order = np.argsort(-(raw - counts), kind="stable")
    while (short := int(total - counts.sum())) > 0:
        room = order[counts[order] < sizes[order]]
        counts[room[:short]] += 1
    return counts


def global_magnitude_counts(weights: Sequence[np.ndarray], n_pruned: int) -> np.ndarray:
    """Per-layer prune counts of exact global magnitude pruning."""
    mags = np.concatenate([np.abs(w).ravel() for w in weights])
    owner = np.repeat(np.arange(len(weights)), [w.size for w in weights])
    pruned = np.argsort(mags, kind="stable")[:n_pruned]
    return np.bincount(owner[pruned], minlength=len(weights)).astype(np.int64)


# ----------------------------------------------------------- quantization


def opq_steps(areas: np.ndarray, n_kept: int, bits: float, caps: np.ndarray) -> np.ndarray:
    """Closed-form shared steps with the container cap Δ_i ≥ caps_i (active set).

    `areas` are A_i = Σ_j N̄_ij α_ij. Layers with A_i = 0 get step 0.
    """
    areas, caps = np.asarray(areas, float), np.asarray(caps, float)
    steps = np.zeros_like(areas)
    free = areas > 0
    fixed = np.zeros_like(free)
    budget = 2.0 ** (bits - 1) * n_kept
    while free.any():
        remaining = budget - (areas[fixed] / caps[fixed]).sum()
        if remaining <= 0:
            steps[free] = caps[free]
            break
        steps[free] = np.cbrt(areas[free]) * (areas[free] ** (2 / 3)).sum() / remaining
        violating = free & (steps < caps)
        if not violating.any():
            break
        steps[violating] = caps[violating]
        fixed |= violating
        free &= ~violating
    steps[fixed] = caps[fixed]
    return steps


@dataclass(frozen=True)
class KeptChannels:
    """One layer's statistics under its mask, from one read of its weights.

    alpha: per channel, the kept maximum |w| (α_ij); count: per channel, the kept
    weights (N̄_ij); below: the weights with |w| <= the Laplace threshold;
    at_least: t ↦ per channel, the kept weights with |w| >= t (float64 compare);
    mask: the mask itself, or None where the caller rebuilds it (onnxjpq.pipeline.stream).
    """

    alpha: np.ndarray
    count: np.ndarray
    below: int
    at_least: Callable[[np.float64], np.ndarray]
    mask: np.ndarray | None = None


def kept_channels(w: np.ndarray, mask: np.ndarray, axis: int | None, groups: int = 1,
                  threshold: float = 0.0) -> KeptChannels:
    """`KeptChannels` of the weights `w` under `mask`, a block of channels at a time."""
    alpha, count, below = [], [], 0
    for a, m in _channel_blocks(w, mask, axis, groups):
        alpha.append(np.where(m, a, 0).max(axis=1).astype(float))
        count.append(m.sum(axis=1).astype(np.int64))
        with np.errstate(over="ignore"):  # a threshold past float32's range compares as Inf
            below += int((a <= threshold).sum())
    return KeptChannels(np.concatenate(alpha), np.concatenate(count), below,
                        lambda t: count_at_least(w, mask, axis, groups, t), mask)


def count_at_least(w: np.ndarray, mask: np.ndarray, axis: int | None, groups: int, t: float) -> np.ndarray:
    """Per channel, the kept weights with |w| >= t (compared in float64)."""
    return np.concatenate([(np.where(m, a, 0) >= np.float64(t)).sum(axis=1)
                           for a, m in _channel_blocks(w, mask, axis, groups)])


def _channel_blocks(w: np.ndarray, mask: np.ndarray, axis: int | None, groups: int):
    """`to_channels` of |w| and of `mask`, in blocks of whole channels of about BLOCK weights
    (one block for a per-tensor or grouped layout)."""
    if axis is None or groups > 1 or w.size <= BLOCK:
        yield to_channels(np.abs(w), axis, groups), to_channels(mask, axis, groups)
        return
    channels = w.shape[axis]
    step = max(1, BLOCK * channels // w.size)
    for c in range(0, channels, step):
        part = (slice(None),) * (axis % w.ndim) + (slice(c, c + step),)
        yield to_channels(np.abs(w[part]), axis), to_channels(mask[part], axis)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel kept maxima α_ij and kept counts N̄_ij of every layer, flattened."""

    alpha: np.ndarray
    count: np.ndarray
    layer: np.ndarray  # owning layer index of each channel
    at_least: tuple[Callable[[np.float64], np.ndarray], ...] = ()  # per layer, `KeptChannels.at_least`

    @classmethod
    def of(cls, layers: Sequence[KeptChannels]) -> ChannelStats:
        return cls(np.concatenate([k.alpha for k in layers]), np.concatenate([k.count for k in layers]),
                   np.concatenate([np.full(k.alpha.size, i) for i, k in enumerate(layers)]),
                   tuple(k.at_least for k in layers))


def channel_stats(layers: Sequence[WeightArray], masks: Sequence[np.ndarray]) -> ChannelStats:
    return ChannelStats.of([kept_channels(l.values, m, l.axis, l.groups) for l, m in zip(layers, masks)])


def _nonzero_counts(stats: ChannelStats, steps: np.ndarray, survivors: np.ndarray) -> np.ndarray:
    """Non-zero codes per channel: all kept weights where survivors are kept, else |w| >= step/2."""
    counts = stats.count.copy()
    for i in np.flatnonzero(~survivors):
        rows = stats.layer == i
        counts[rows] = stats.at_least[i](steps[i] / 2) if steps[i] > 0 else 0
    return counts


def packed_bits(stats: ChannelStats, steps: np.ndarray, survivors: np.ndarray | bool) -> float:
    """Mean ⌈log2(2m+1)⌉ over the non-zero codes, m = the channel's largest code.

    `survivors` (per layer, or one value): kept weights never round to 0 there.
    """
    survivors = np.broadcast_to(np.asarray(survivors, bool), steps.shape)
    step = steps[stats.layer]
    safe = np.where(step > 0, step, 1.0)
    m = np.where(step > 0, np.floor(stats.alpha / safe + 0.5), 0)
    m = np.where(survivors[stats.layer] & (stats.count > 0), np.maximum(m, 1), m)
    counts = _nonzero_counts(stats, steps, survivors) if stats.at_least else stats.count
    kept = counts.sum()
    return float((counts * code_width(m)).sum() / kept) if kept else 0.0


def calibrate_steps(stats: ChannelStats, base: np.ndarray, caps: np.ndarray, ceilings: np.ndarray,
                    free: np.ndarray, bits: float, keep_survivors: np.ndarray | bool) -> tuple[np.ndarray, float]:
    """Scale the free layers' steps by one factor c so packed bits meet `bits`.

    Steps stay within [caps, ceilings]: the container's floor, and the layer's
    largest |w| (a coarser step would only inflate the weights).
    """

    def steps_at(log_c: float) -> np.ndarray:
        return np.where(free, np.clip(np.exp(log_c) * base, caps, np.maximum(ceilings, caps)), base)

    def excess(log_c: float) -> float:
        return packed_bits(stats, steps_at(log_c), keep_survivors) - bits

    lo, hi = -1.0, 1.0
    while excess(lo) < 0 and lo > -40:
        lo -= 2.0
    while excess(hi) > 0 and hi < 40:
        hi += 2.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda c: abs(excess(c)))
    return steps_at(best), float(np.exp(best))


def int4_caps(stats: ChannelStats, layer_max: np.ndarray, sizes: np.ndarray, solved: np.ndarray,
              bits: float, keep_survivors: np.ndarray | bool) -> np.ndarray:
    """Step floors that keep as many weights as possible in int4 codes (|q| ≤ 7).

    Start with every solved layer capped at int4; while the finest steps the
    caps allow cannot reach `bits`, move the smallest int4 layer to the int8 cap.
    """
    caps8 = layer_max / CONTAINER_MAX["int8"]
    caps = np.where(solved, layer_max / CONTAINER_MAX["int4"], caps8)
    for i in np.argsort(sizes, kind="stable"):
        if packed_bits(stats, caps, keep_survivors) >= bits:
            break
        if solved[i]:
            caps[i] = caps8[i]
    return caps


# ------------------------------------------------------------------ solve


class LayerSource(Protocol):
    """A layer as `solve_sources` reads it: each method is one read of its weights (the
    solver-space values, float32). `ArraySource` holds them in memory; onnxjpq.pipeline.stream
    reads them from the model's external data, one layer at a time."""

    name: str
    size: int

    def laplace_scale(self) -> float:
        """`stats.laplace_scale` of the values."""

    def values(self) -> np.ndarray:
        """The values (exact prune mode only: it ranks every layer's weights at once)."""

    def kept(self, n_pruned: int, threshold: float) -> KeptChannels:
        """`kept_channels` under `magnitude_mask(values, n_pruned)`."""


class ArraySource:
    """A `LayerSource` over a `WeightArray` in memory."""

    def __init__(self, layer: WeightArray):
        self.layer, self.name, self.size = layer, layer.name, layer.values.size

    def laplace_scale(self) -> float:
        return laplace_scale(self.layer.values)

    def values(self) -> np.ndarray:
        return self.layer.values

    def kept(self, n_pruned: int, threshold: float) -> KeptChannels:
        w = self.layer.values
        return kept_channels(w, magnitude_mask(w, n_pruned), self.layer.axis, self.layer.groups, threshold)


def solve_opq(layers: Sequence[WeightArray], config: OpqConfig,
              fixed: frozenset[str] = frozenset()) -> CompressionPlan:
    """Masks and shared steps for `layers`; layers named in `fixed` stay dense at 8 bits."""
    return solve_sources([ArraySource(l) for l in layers], config, fixed)


@dataclass(frozen=True)
class _Pruning:
    solved: np.ndarray  # per layer: pruned and quantized by the solve (not fixed, not all zero)
    counts: np.ndarray  # per layer: weights to prune
    predicted: np.ndarray  # per layer: the Laplace model's prune ratio
    threshold: float
    target: float  # prune ratio of the solved layers


def _solve_pruning(sources: Sequence[LayerSource], sizes: np.ndarray, config: OpqConfig,
                   fixed: frozenset[str]) -> _Pruning:
    scales = np.array([s.laplace_scale() for s in sources])
    solved = np.array([s.name not in fixed and sc > 0 for s, sc in zip(sources, scales)])
    # all-zero layers store no non-zero weight: they count as pruned already
    n_pruned = max(0, int(round(config.prune * sizes.sum())) - int(sizes[scales == 0].sum()))
    if n_pruned > sizes[solved].sum():
        raise OptionError(f"cannot prune {config.prune:.0%} of the weights: "
                          f"only {sizes[solved].sum()} of {sizes.sum()} may be pruned "
                          "(layers kept at 8 bits are not)")

    target = n_pruned / sizes[solved].sum() if solved.any() else 0.0
    threshold = solve_prune_threshold(sizes[solved], scales[solved], target) if solved.any() else 0.0
    predicted = np.array([laplace_prune_fraction(threshold, s) if ok else 0.0
                          for s, ok in zip(scales, solved)])
    counts = np.zeros(len(sources), np.int64)
    if config.prune_mode == "laplace":
        counts[solved] = largest_remainder_counts(predicted[solved], sizes[solved], n_pruned)
    elif solved.any():
        counts[solved] = global_magnitude_counts([s.values() for s, ok in zip(sources, solved) if ok],
                                                 n_pruned)
    return _Pruning(solved, counts, predicted, threshold, target)


def solve_sources(sources: Sequence[LayerSource], config: OpqConfig,
                  fixed: frozenset[str] = frozenset()) -> CompressionPlan:
    """`solve_opq` on layers read through `LayerSource`s: one read for the Laplace scales,
    one for the masks and channel statistics, and (in layers whose small kept weights may
    round to 0) one per distinct step the calibration tries."""
    sizes = np.array([s.size for s in sources], np.int64)
    pruning = _solve_pruning(sources, sizes, config, fixed)
    solved = pruning.solved
    survivors = config.keep_survivors & (pruning.counts > 0)  # unpruned layers round small weights to 0

    kept = [s.kept(int(k), pruning.threshold) for s, k in zip(sources, pruning.counts)]
    stats = ChannelStats.of(kept)
    areas = np.bincount(stats.layer, weights=stats.count * stats.alpha, minlength=len(sources))
    layer_max = np.array([stats.alpha[stats.layer == i].max(initial=0.0) for i in range(len(sources))])
    caps = layer_max / CONTAINER_MAX["int8"]
    if config.fit_int4:
        caps = int4_caps(stats, layer_max, sizes, solved, config.bits, survivors)
    n_kept = int(stats.count[solved[stats.layer]].sum())
    base = np.where(solved, 0.0, caps)
    if solved.any():
        base[solved] = opq_steps(areas[solved], n_kept, config.bits, caps[solved])
    steps, factor = calibrate_steps(stats, base, caps, layer_max, solved & (areas > 0), config.bits, survivors)

    n_solved = int(sizes[solved].sum())
    below = sum(k.below for k, ok in zip(kept, solved) if ok)
    diagnostics = {
        "laplace_threshold": pruning.threshold,
        "laplace_threshold_prune_ratio": below / n_solved if n_solved and pruning.target else 0.0,
        "target_prune_ratio_solved_layers": pruning.target,
        "step_scale_factor": factor,
        "bits_target_met": (config.bits >= 7.5  # 8 packed bits needs every channel's code >= 64
                            or abs(packed_bits(stats, steps, survivors) - config.bits) <= 0.05),
        "bits_bins": float(np.log2(_mean_bins(stats, steps))) if n_kept else 0.0,
    }
    plans = tuple(LayerPlan(s.name, k.mask, float(st), bool(sv), s.name in fixed, float(pr), prune_count=int(n))
                  for s, k, st, pr, sv, n in zip(sources, kept, steps, pruning.predicted, survivors, pruning.counts))
    return CompressionPlan(plans, "opq", diagnostics)


def _mean_bins(stats: ChannelStats, steps: np.ndarray) -> float:
    step = steps[stats.layer]
    bins = np.where(step > 0, 2 * stats.alpha / np.where(step > 0, step, 1), 0)
    return float((stats.count * bins).sum() / max(stats.count.sum(), 1))
