"""ADMM compression under a model-size budget (ANNC, METHODS.md §3; progressive ADMM, §4).

Splitting: minimise ℓ(W) + Σ ρ/2·‖W − V + U‖² where V is W projected onto the
set of weights that meet the budget: sparse and quantized, with a per-layer
sparsity and bit-width chosen by the allocation of `methods.annc` (the
multiple-choice knapsack of ANNC, solved on W + U). Every `project_every`
epochs: V ← Π(W + U), U ← U + W − V, ρ ← 1.3·ρ. The targets are progressive:
the rate rises geometrically from `start_rate` to the target over the ADMM
epochs. Then W is projected for real and retrained with masks and steps
frozen (the masked method).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.channels import normalize, rescale
from ..errors import OptionError
from ..methods.annc import AnncConfig, solve_annc
from ..core.plan import CompressionPlan
from ..core.quant import dequantize, quantize_codes


@dataclass(frozen=True)
class AdmmConfig:
    """rate: the papers' rate (32·N / Σ bits·nonzero); epochs: ADMM epochs before the
    masked retraining; rho: initial penalty, multiplied by rho_growth at each projection."""

    rate: float
    epochs: int = 20
    retrain_epochs: int = 10
    rho: float = 1e-3
    rho_growth: float = 1.3
    project_every: int = 1
    start_rate: float = 8.0

    def __post_init__(self):
        if not self.rate > 1 or self.epochs < 1 or self.retrain_epochs < 0 or not self.rho > 0:
            raise OptionError("ADMM needs rate > 1, epochs >= 1, retrain epochs >= 0 and rho > 0")

    def rate_at(self, epoch: int) -> float:
        """The progressive target: geometric from start_rate to rate over the first 2/3 of the epochs."""
        start = min(self.start_rate, self.rate)
        ramp = max(1, (2 * self.epochs) // 3)
        return float(start * (self.rate / start) ** min(1.0, epoch / ramp))


@dataclass
class _Snapshot:
    name: str
    values: np.ndarray
    axis: int | None
    groups: int
    extra_param_bits: int = 0


def project(layers, arrays: dict[str, np.ndarray], rate: float, fixed: frozenset[str],
            reserved: float, total_params: int) -> tuple[dict[str, np.ndarray], CompressionPlan]:
    """Π: the nearest weights within the budget (allocation on `arrays`), and the plan giving them."""
    snaps = [_Snapshot(l.name, arrays[l.name], l.axis, l.groups) for l in layers]
    normalized, ranges = normalize(snaps, "auto")
    plan = solve_annc(normalized, AnncConfig(rate=rate, objective="paper"), fixed, reserved=reserved,
                      total_params=total_params)
    plan = rescale(plan, snaps, ranges)
    projected = {}
    for snap, p in zip(snaps, plan.layers):
        steps = p.steps_for(snap.values.shape)
        projected[snap.name] = dequantize(quantize_codes(snap.values, p.mask, steps, p.keep_survivors, p.max_code),
                                          steps)
    return projected, plan


class AdmmState:
    """V, U and ρ for the layers, and the penalty term the training loop adds to the loss."""

    def __init__(self, module, layers, config: AdmmConfig, fixed, reserved: float, total_params: int):
        self.module, self.layers, self.config = module, layers, config
        self.fixed, self.reserved, self.total = fixed, reserved, total_params
        self.rho = config.rho
        zeros = {l.name: np.zeros_like(l.values) for l in layers}
        self.U = {n: torch.from_numpy(z) for n, z in zeros.items()}
        self.V = {}
        self.plan = None
        self.update_v(0)

    def weights(self) -> dict[str, np.ndarray]:
        return {l.name: self.module.parameter(l.name).detach().numpy() for l in self.layers}

    def update_v(self, epoch: int) -> None:
        w = self.weights()
        target = {n: w[n] + self.U[n].numpy() for n in w}
        projected, self.plan = project(self.layers, target, self.config.rate_at(epoch), self.fixed,
                                       self.reserved, self.total)
        self.V = {n: torch.from_numpy(v) for n, v in projected.items()}

    def end_of_epoch(self, epoch: int) -> None:
        if (epoch + 1) % self.config.project_every == 0:
            self.update_v(epoch + 1)
            w = self.weights()
            for n in self.U:
                self.U[n] = self.U[n] + torch.from_numpy(w[n]) - self.V[n]
            self.rho *= self.config.rho_growth

    def state_dict(self) -> dict:
        """V, U and ρ, for the checkpoint (the module holds W)."""
        return {"V": dict(self.V), "U": dict(self.U), "rho": self.rho}

    def load_state_dict(self, state: dict) -> None:
        self.V, self.U, self.rho = dict(state["V"]), dict(state["U"]), float(state["rho"])

    def penalty(self) -> torch.Tensor:
        return sum(0.5 * self.rho * ((self.module.parameter(n) - self.V[n] + self.U[n]) ** 2).sum()
                   for n in self.V)
