"""Per-layer sparsity and bit-width under a model-size budget (ANNC-style allocation).

ANNC's constraint Σ_i b_i·‖W_i‖_0 ≤ B_s, solved post-training as an allocation
problem (METHODS.md §3, §6). Each layer i chooses one option (s, b): prune the
fraction s of its smallest weights, quantize the rest with b-bit symmetric codes
(|q| ≤ 2^{b−1}−1) on one step, whose clipping range is picked to minimise the
measured error. An option costs the bits the report's storage_rate counts:

    c_i(s, b) = N_i(1−s)·b + I_i(s, b) + 32 + 4·C_i   (values, index, step, widths)

and has distortion D_i(s, b): the squared error of the pruned weights (exact,
from prefix sums of sorted w²) plus the measured rounding error of the kept ones.
With layer weights g_i (1/‖W_i‖² data-free, so relative errors add up as they do
through a network; times a measured sensitivity with calibration data):

    minimise Σ g_i·D_i(s_i, b_i)  subject to  Σ c_i(s_i, b_i) ≤ budget,

solved by Lagrangian relaxation (each layer takes argmin g_iD_i + μc_i, μ found
by bisection) and finished with ANNC's greedy: upgrades in decreasing ΔD/Δc
while they fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..core.channels import check_granularity
from ..errors import BudgetUnreachable, OptionError
from ..core.plan import CompressionPlan, LayerPlan, WeightArray
from ..core.quant import magnitude_mask, quantize_codes, to_channels
from ..core.storage import storage_bits

SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)
CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_SAMPLE = 1 << 15
OBJECTIVES = ("size", "paper", "bops")
ACTIVATION_BITS = 32  # float activations; BOPs count MACs x weight bits x activation bits


@dataclass(frozen=True)
class AnncConfig:
    """Budget mode: reach `rate` (storage rate, x) or `size_kb` (weight storage) at least error.

    min_bits/max_bits bound each layer's code width; pow2 restricts widths to
    2, 4, 8 (DJPQ's power-of-two option); max_prune bounds each layer's sparsity.
    uniform: the baseline allocation, one sparsity and bit-width for every layer.
    objective: "size" (rate = storage rate), "paper" (rate = 32·N / Σ bits·nonzero, the
    ANNC/OPQ tables' convention: no index or step bits) or "bops" (rate = BOPs
    reduction vs fp32, DJPQ eq. 16: MACs of kept weights x weight bits x activation bits).
    """

    rate: float | None = None
    size_kb: float | None = None
    min_bits: int = 2
    max_bits: int = 8
    pow2: bool = False
    max_prune: float = 0.975
    uniform: bool = False
    objective: str = "size"
    granularity: str = "auto"
    version: int = 1

    def __post_init__(self):
        check_granularity(self.granularity)
        if (self.rate is None) == (self.size_kb is None):
            raise OptionError("give exactly one budget: a rate or a size")
        if self.rate is not None and not self.rate > 1:
            raise OptionError(f"rate must be above 1, got {self.rate}")
        if self.size_kb is not None and not self.size_kb > 0:
            raise OptionError(f"size must be positive, got {self.size_kb} KB")
        if not 2 <= self.min_bits <= self.max_bits <= 8:
            raise OptionError(f"bit range must satisfy 2 <= min <= max <= 8, got {self.min_bits}..{self.max_bits}")
        if not 0 <= self.max_prune < 1:
            raise OptionError(f"max prune must be in [0, 1), got {self.max_prune}")
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "bops" and self.rate is None:
            raise OptionError("the BOPs objective takes a rate (BOPs reduction), not a size")

    def bit_choices(self) -> tuple[int, ...]:
        bits = range(self.min_bits, self.max_bits + 1)
        return tuple(b for b in bits if not self.pow2 or b & (b - 1) == 0)

    def sparsities(self) -> tuple[float, ...]:
        return tuple(s for s in SPARSITIES if s <= self.max_prune)

    def budget(self, total_params: int, total_macs: int = 0) -> float:
        """Storage bits, or BOPs for the BOPs objective (fp32: 1024 x MACs)."""
        if self.objective == "bops":
            return 1024 * total_macs / self.rate
        return 32 * total_params / self.rate if self.rate else self.size_kb * 8192


@dataclass(frozen=True)
class LayerOptions:
    """The (sparsity, bits) choices of one layer with their step, clip, distortion and cost."""

    sparsity: np.ndarray
    bits: np.ndarray
    step: np.ndarray
    max_code: np.ndarray
    distortion: np.ndarray
    cost: np.ndarray


def index_cost(n: int, kept: int, width: float) -> float:
    """Expected bits of the cheaper of a bitmask and a relative index (runs ~ geometric)."""
    if kept in (0, n):
        return 0.0
    q = kept / n
    best = float(n)
    for r in range(1, 9):
        x = (1 - q) ** (2**r)
        fillers = kept * x / (1 - x)
        best = min(best, (kept + fillers) * r + fillers * width)
    return best


def _rounding_error(kept: np.ndarray, amax: float, bits: int, survivors: bool) -> tuple[float, float]:
    """Least squared error over the clip ratios, and its step, for b-bit codes of `kept`
    (with `survivors`, kept weights never round to 0)."""
    m = 2 ** (bits - 1) - 1
    steps = np.array(CLIP_RATIOS) * amax / m
    q = np.clip(np.floor(kept[:, None] / steps + 0.5), 1 if survivors else 0, m)
    err = ((kept[:, None] - q * steps) ** 2).sum(axis=0)
    best = int(np.argmin(err))
    return float(err[best]), float(steps[best])


def layer_options(values: np.ndarray, n_channels: int, sparsities: Sequence[float],
                  bits: Sequence[int]) -> LayerOptions:
    """Distortion and cost of every (sparsity, bits) option of one layer."""
    a = np.sort(np.abs(values.astype(np.float64).ravel()))
    n, amax = a.size, float(a[-1]) if a.size else 0.0
    pruned_sq = np.concatenate([[0.0], np.cumsum(a * a)])
    stride = max(1, -(-n // _SAMPLE))
    sample = a[::stride]
    rows = []
    for s in sparsities:
        k = int(round(s * n))
        kept = sample[-(-k // stride):]
        scale = (n - k) / max(kept.size, 1)
        for b in bits:
            err, step = _rounding_error(kept, amax, b, k > 0) if kept.size and amax > 0 else (0.0, 0.0)
            cost = (n - k) * b + index_cost(n, n - k, b) + 32 + 4 * n_channels
            rows.append((s, b, step, 2 ** (b - 1) - 1, pruned_sq[k] + err * scale, cost))
    cols = list(zip(*rows))
    return LayerOptions(*(np.array(c) for c in cols))


def unbound_bit_limits(config: AnncConfig, widths: Sequence[int]) -> list[str]:
    """Notes on the --min-bits/--max-bits set away from 2..8 that no layer's chosen width touches."""
    notes = []
    if widths and config.min_bits > 2 and min(widths) > config.min_bits:
        notes.append(f"--min-bits {config.min_bits} did not bind: no layer is at {config.min_bits} bits "
                     f"(the narrowest is {min(widths)})")
    if widths and config.max_bits < 8 and max(widths) < config.max_bits:
        notes.append(f"--max-bits {config.max_bits} did not bind: no layer is at {config.max_bits} bits "
                     f"(the widest is {max(widths)})")
    return notes


def layer_codes(layer: WeightArray, plan: LayerPlan) -> np.ndarray:
    w = layer.values  # one read (a streamed layer reads its file)
    return quantize_codes(w, plan.mask_for(w), plan.step, plan.keep_survivors, plan.max_code)


def _choose(options: list[LayerOptions], weights: np.ndarray, mu: float) -> list[int]:
    return [int(np.argmin(w * o.distortion + mu * o.cost)) for o, w in zip(options, weights)]


def _total_cost(options: list[LayerOptions], choice: list[int]) -> float:
    return float(sum(o.cost[c] for o, c in zip(options, choice)))


def allocate(options: list[LayerOptions], weights: np.ndarray, budget: float) -> list[int]:
    """Option index per layer minimising Σ w_i·D_i within `budget` bits."""
    cheapest = [int(np.argmin(o.cost)) for o in options]
    if _total_cost(options, cheapest) > budget:
        need = _total_cost(options, cheapest)
        raise BudgetUnreachable(f"budget unreachable: the smallest allocation needs {need / 8192:.1f} KB, "
                                f"the budget is {budget / 8192:.1f} KB", need)
    lo, hi = -80.0, 80.0  # log μ: at hi every layer takes its cheapest option
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _total_cost(options, _choose(options, weights, np.exp(mid))) <= budget:
            hi = mid
        else:
            lo = mid
    choice = _choose(options, weights, np.exp(hi))
    if _total_cost(options, choice) > budget:
        choice = cheapest
    starts = [choice]
    uniform = uniform_choice(options, weights, budget)
    if uniform is not None:  # the relaxation can miss non-convex points: the uniform one is a start too
        starts.append([uniform] * len(options))
    finished = [_greedy_fill(options, weights, budget, start) for start in starts]
    return min(finished, key=lambda c: sum(w * o.distortion[j] for o, w, j in zip(options, weights, c)))


def _greedy_fill(options: list[LayerOptions], weights: np.ndarray, budget: float,
                 choice: list[int]) -> list[int]:
    """ANNC's finish: apply the upgrade with the best error drop per bit while one fits."""
    choice = list(choice)
    slack = budget - _total_cost(options, choice)
    while True:
        best, best_gain = None, 0.0
        for i, (o, w) in enumerate(zip(options, weights)):
            extra = o.cost - o.cost[choice[i]]
            drop = w * (o.distortion[choice[i]] - o.distortion)
            ok = (extra <= slack) & (drop > 0)
            if not ok.any():
                continue
            gain = np.where(ok, drop / np.maximum(extra, 1e-9), -np.inf)
            j = int(np.argmax(gain))
            if gain[j] > best_gain:
                best, best_gain = (i, j), gain[j]
        if best is None:
            return choice
        i, j = best
        slack -= options[i].cost[j] - options[i].cost[choice[i]]
        choice[i] = j


def uniform_choice(options: list[LayerOptions], weights: np.ndarray, budget: float) -> int | None:
    """The single option index (same sparsity and bits everywhere) with least error in budget
    (None also where the layers' option lists differ: there is no common setting to index)."""
    if len({len(o.cost) for o in options}) != 1:
        return None
    feasible = [j for j in range(len(options[0].cost)) if sum(o.cost[j] for o in options) <= budget]
    if not feasible:
        return None
    return min(feasible, key=lambda j: sum(w * o.distortion[j] for o, w in zip(options, weights)))


def _allocate_or_uniform(options: list[LayerOptions], weights: np.ndarray, budget: float,
                         uniform: bool) -> list[int]:
    if not uniform:
        return allocate(options, weights, budget)
    j = uniform_choice(options, weights, budget)
    if j is None:
        raise OptionError(f"budget unreachable with one setting for every layer ({budget / 8192:.1f} KB)")
    return [j] * len(options)


def _layer_plan(layer: WeightArray, options: LayerOptions, j: int, masks: bool) -> LayerPlan:
    w = layer.values
    k = int(round(options.sparsity[j] * w.size))
    return LayerPlan(layer.name, magnitude_mask(w, k) if masks else None,
                     float(options.step[j]) or 1.0, keep_survivors=k > 0, max_code=int(options.max_code[j]),
                     predicted_prune_ratio=float(options.sparsity[j]), prune_count=k)


def _fixed_plan(layer: WeightArray, masks: bool) -> LayerPlan:
    w = layer.values
    amax = float(np.abs(w).max(initial=0.0))
    return LayerPlan(layer.name, np.ones(w.shape, bool) if masks else None, amax / 127 or 1.0, fixed=True)


def _storage_cost(layer: WeightArray, plan: LayerPlan) -> float:
    return float(sum(storage_bits(layer_codes(layer, plan), layer.axis, layer.groups))) + layer.extra_param_bits


def _bops_cost(macs: int, plan: LayerPlan, layer: WeightArray) -> float:
    codes = layer_codes(layer, plan)
    value_bits = storage_bits(codes, layer.axis, layer.groups)[0]
    return macs * value_bits / codes.size * ACTIVATION_BITS


def solve_annc(layers: Sequence[WeightArray], config: AnncConfig, fixed: frozenset[str] = frozenset(),
               reserved: float = 0.0, total_params: int | None = None,
               sensitivity: dict[str, float] | None = None, macs: dict[str, int | None] | None = None,
               masks: bool = True) -> CompressionPlan:
    """Masks, steps and clips for `layers` within the budget.

    `reserved` is budget spent elsewhere (weights left in float); layers named
    in `fixed` stay dense at 8 bits. `sensitivity` multiplies each layer's
    weight. `macs` (dense MACs per layer) is needed for the BOPs objective. With
    `masks` False the plans carry prune counts instead of masks (streaming: each read of
    `layer.values` may read a file, and no mask is kept).
    """
    bops = config.objective == "bops"
    if bops and (not macs or any(macs.get(l.name) is None for l in layers)):
        raise OptionError("the BOPs objective needs every layer's MACs: shape inference could not find them")
    total_params = total_params or sum(l.values.size for l in layers)
    total = config.budget(total_params, sum(macs.values()) if bops else 0)

    def cost(layer: WeightArray, plan: LayerPlan) -> float:
        if bops:
            return _bops_cost(macs[layer.name], plan, layer)
        if config.objective == "paper":
            return float(storage_bits(layer_codes(layer, plan), layer.axis, layer.groups)[0])
        return _storage_cost(layer, plan)

    plans = {l.name: _fixed_plan(l, masks) for l in layers if l.name in fixed}
    free = [l for l in layers if l.name not in fixed]
    budget = total - reserved - sum(cost(l, plans[l.name]) for l in layers if l.name in fixed)
    options = [_options(l, config, macs[l.name] if bops else None) for l in free]
    if config.objective == "paper":
        options = [replace(o, cost=l.values.size * (1 - o.sparsity) * o.bits) for l, o in zip(free, options)]
    energy = np.array([max(float((l.values.astype(np.float64) ** 2).sum()), 1e-30) for l in free])
    weights = np.array([(sensitivity or {}).get(l.name, 1.0) for l in free]) / energy
    choice, target, spent = [], budget, 0.0
    for _ in range(6):  # the index cost is an estimate: measure, and tighten until the budget holds
        choice = _allocate_or_uniform(options, weights, target, config.uniform) if free else []
        free_plans = [_layer_plan(l, o, j, masks) for l, o, j in zip(free, options, choice)]
        spent = sum(cost(l, p) for l, p in zip(free, free_plans))
        if spent <= budget:
            break
        target -= 1.05 * (spent - budget) + 8
    plans.update((p.name, p) for p in free_plans)
    return CompressionPlan(tuple(plans[l.name] for l in layers), "annc",
                           _diagnostics(options, weights, choice, target, total, spent + total - budget, config))


def _options(layer: WeightArray, config: AnncConfig, macs: int | None) -> LayerOptions:
    w = layer.values
    n_channels = to_channels(w, layer.axis, layer.groups).shape[0]
    options = layer_options(w, n_channels, config.sparsities(), config.bit_choices())
    options = replace(options, cost=options.cost + layer.extra_param_bits)
    if macs is None:
        return options
    return replace(options, cost=macs * (1 - options.sparsity) * options.bits * ACTIVATION_BITS)


def _diagnostics(options, weights, choice, target, total, spent, config) -> dict:
    """`target`: the estimated budget the allocation was solved for (after tightening);
    the uniform baseline is solved for the same."""
    uniform = uniform_choice(options, weights, target) if options else None
    return {
        "objective": config.objective,
        "budget": total,
        "allocated": spent,
        "predicted_distortion": float(sum(w * o.distortion[j] for o, w, j in zip(options, weights, choice))),
        "uniform_predicted_distortion": (None if uniform is None else
                                         float(sum(w * o.distortion[uniform] for o, w in zip(options, weights)))),
        "uniform_choice": (None if uniform is None else
                           {"prune": float(options[0].sparsity[uniform]), "bits": int(options[0].bits[uniform])}),
    }
