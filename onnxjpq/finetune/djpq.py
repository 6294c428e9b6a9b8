"""DJPQ: differentiable joint pruning and quantization (METHODS.md §5), for weights.

Per layer, a learnable non-linear quantizer (q_s = 0): y = min(|w|, q_m)^t,
w_q = sgn(w)·d·⌊y/d⌉ (straight-through rounding, so d, q_m and t learn as in
eqs. 5-7), with b = log2(q_m^t/d + 1) + 1 bits (eq. 3, ceiling dropped in the
loss). Per output channel, a VIB gate z = μ + ε·σ (μ at inference); channel i
is pruned when α = μ²/σ² < α_th = 1e-3. The loss (eq. 17, with a budget):

    CE + γ·Σ log(1 + μ²/σ²) + β·max(0, BOPs / (BOPs_fp32 / R) − 1)

where BOPs_l = MACs_l·(1 − p_l)·b_l·32 with the soft pruning ratio
p_l = mean σ((ln α_th − ln α)/0.5) (the log-domain form of eq. 19). The hinge
on the budget R replaces the paper's free β·BOPs, so a user asks for a BOPs
reduction. Activations stay float (32 bits in BOPs); input-channel pruning of
the next layer is not counted (both [D], conservative). Power-of-two bits
(Alg. 2): b' = 2^⌊log2 b⌋ ≥ 2 and d' = q_m^t/(2^{b'−1} − 1) in the forward pass.

Export: the stored weight is sgn·d·k (k integer) times the gate μ: codes k,
one step d·|μ_j| per channel; pruned channels get code 0 and their bias is
multiplied by μ like the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import OptionError
from ..plan import CompressionPlan, LayerPlan

ALPHA_THRESHOLD = 1e-3


@dataclass(frozen=True)
class DjpqConfig:
    rate: float = 20.0  # BOPs reduction to reach
    epochs: int = 20
    gamma: float = 1e-3
    beta: float = 5.0
    retrain_epochs: int = 10  # masked retraining with the learned bits and channels frozen
    lr: float = 1e-3  # Adam, for the joint phase and the retraining
    init_bits: int = 8
    pow2: bool = False
    lr_scale_quant: float = 10.0  # the quantizers' and gates' learning rates, as multiples of --lr
    lr_scale_gates: float = 10.0

    def __post_init__(self):
        if not self.rate > 1 or self.epochs < 1 or not 2 <= self.init_bits <= 8:
            raise OptionError("DJPQ needs rate > 1, epochs >= 1 and 2 <= init bits <= 8")


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class LayerQuantizer(nn.Module):
    """The learnable quantizer and channel gates of one weight."""

    def __init__(self, values: np.ndarray, axis: int | None, init_bits: int, pow2: bool):
        super().__init__()
        amax = float(np.abs(values).max()) or 1.0
        self.q_m = nn.Parameter(torch.tensor(amax))
        self.log_d = nn.Parameter(torch.tensor(math.log(amax / (2 ** (init_bits - 1) - 1))))
        self.t = nn.Parameter(torch.tensor(1.0))
        self.axis = axis
        channels = values.shape[axis] if axis is not None else 1
        self.mu = nn.Parameter(torch.ones(channels))
        self.log_var = nn.Parameter(torch.full((channels,), math.log(1e-2)))
        self.shape = [1] * values.ndim
        if axis is not None:
            self.shape[axis % values.ndim] = -1
        self.pow2 = pow2
        self.z = self.mu.detach()  # the gate of the current forward pass (see sample_gate)

    def cap(self) -> torch.Tensor:
        return torch.clamp(self.q_m, min=1e-8) ** self.t

    def _d(self) -> torch.Tensor:
        return torch.clamp(torch.exp(self.log_d), min=self.cap() / 127, max=self.cap())  # 2 to 8 bits

    def step(self) -> torch.Tensor:
        d = self._d()
        if self.pow2:  # Alg. 2, forward only
            bits = 2.0 ** torch.floor(torch.log2(torch.clamp(self.bits().detach(), min=2.0)))
            d = d + (self.cap() / (2 ** (bits - 1) - 1) - d).detach()
        return d

    def bits(self) -> torch.Tensor:
        return torch.log2(self.cap() / self._d() + 1) + 1

    def alpha(self) -> torch.Tensor:
        return self.mu ** 2 / torch.exp(self.log_var)

    def sample_gate(self, training: bool) -> None:
        noise = torch.randn_like(self.mu) * torch.exp(0.5 * self.log_var) if training else 0.0
        self.z = self.mu + noise

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        y = torch.minimum(torch.clamp(w.abs(), min=1e-12) ** self.t, self.cap())
        return torch.sign(w) * _round_ste(y / self.step())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.z.reshape(self.shape) * self.codes(w) * self.step()

    def soft_density(self) -> torch.Tensor:
        return 1 - torch.sigmoid((math.log(ALPHA_THRESHOLD) - torch.log(self.alpha() + 1e-30)) / 0.5).mean()


def _bias_names(layer) -> list[str]:
    """Biases of the layer's Conv/Gemm uses (input 2): gated with the output channels."""
    return sorted({node.inputs[2].name for node, _ in layer.uses
                   if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name})


class DjpqState:
    """The quantizers of every layer, attached to the module, and the DJPQ regulariser."""

    def __init__(self, module, layers, macs: dict[str, int], config: DjpqConfig):
        self.module, self.layers, self.config = module, layers, config
        self.quantizers = {}
        for layer in layers:
            axis = layer.axis if layer.groups == 1 else None
            self.quantizers[layer.name] = LayerQuantizer(layer.values, axis, config.init_bits, config.pow2)
        module.djpq = nn.ModuleList(self.quantizers.values())  # so the optimiser trains them
        module.lr_scales = {id(p): config.lr_scale_gates if name in ("mu", "log_var") else config.lr_scale_quant
                            for q in self.quantizers.values() for name, p in q.named_parameters()}
        self.macs = torch.tensor([float(macs[l.name]) for l in layers])
        self.budget = 1024 * float(self.macs.sum()) / config.rate
        for layer in layers:
            q = self.quantizers[layer.name]
            module.weight_transform[layer.name] = q
            for bias in _bias_names(layer):
                if bias in module.named_weights():
                    module.weight_transform[bias] = (lambda q: lambda b: b * q.z)(q)
        module.pre_forward.append(self.sample)

    def detach(self) -> None:
        """Remove the quantizers from the module (after `export`)."""
        for name in list(self.module.weight_transform):
            del self.module.weight_transform[name]
        self.module.pre_forward.remove(self.sample)
        del self.module.djpq
        self.module.lr_scales = {}

    def sample(self) -> None:
        for q in self.quantizers.values():
            q.sample_gate(self.module.training)

    def soft_bops(self) -> torch.Tensor:
        qs = [self.quantizers[l.name] for l in self.layers]
        density = torch.stack([q.soft_density() for q in qs])
        bits = torch.stack([q.bits() for q in qs])
        return (self.macs * density * bits * 32).sum()

    def penalty(self) -> torch.Tensor:
        vib = sum(torch.log1p(q.alpha()).sum() for q in self.quantizers.values())
        return self.config.gamma * vib + self.config.beta * torch.relu(self.soft_bops() / self.budget - 1)

    def export(self) -> tuple[dict[str, np.ndarray], CompressionPlan]:
        """Stored values (codes x channel steps) of every weight and bias, and the plan giving them."""
        arrays, plans = {}, []
        with torch.no_grad():
            for layer in self.layers:
                q = self.quantizers[layer.name]
                pruned = q.alpha() < ALPHA_THRESHOLD
                q.mu[pruned] = 0.0  # the torch module then matches the export
                weight = self.module.parameter(layer.name)
                codes = (q.codes(weight) * torch.sign(q.mu).reshape(q.shape)).numpy()
                steps = (q.step() * q.mu.abs()).numpy().astype(np.float32)
                steps = np.where(steps > 0, steps, float(q.step()))
                view = steps.reshape(q.shape) if q.axis is not None else steps.reshape(())
                if q.axis is None:
                    codes = codes * (q.mu.item() != 0)
                arrays[layer.name] = (codes * view).astype(np.float32)
                for bias in _bias_names(layer):
                    if bias in self.module.named_weights():
                        arrays[bias] = (self.module.parameter(bias) * q.mu).numpy()
                plans.append(LayerPlan(layer.name, codes != 0, float(np.median(steps)), keep_survivors=False,
                                       channel_steps=steps if q.axis is not None else None,
                                       channel_axis=q.axis))
            bits = {l.name: float(self.quantizers[l.name].bits()) for l in self.layers}
            ratio = 1024 * float(self.macs.sum()) / float(self.soft_bops())
        return arrays, CompressionPlan(tuple(plans), "djpq", {"learned_bits": bits, "soft_bops_ratio": ratio})
