"""DJPQ: differentiable joint pruning and quantization (METHODS.md §5), of weights and layer inputs.

Per layer, a learnable non-linear quantizer (q_s = 0): y = min(|w|, q_m)^t,
w_q = sgn(w)·d·⌊y/d⌉ (straight-through rounding, so d, q_m and t learn as in
eqs. 5-7), with b = log2(q_m^t/d + 1) + 1 bits (eq. 3). q_m is learned as
ln q_m [D]: Adam's steps are absolute, and 1e-2 per step on a range of 0.2
(lenet300) clipped every weight within an epoch and the accuracy collapsed.
Per output channel, a VIB gate z = μ + ε·σ (μ at inference); channel i is
pruned when α = μ²/σ² < α_th = 1e-3. The loss (eq. 17, with a budget):

    CE + γ·Σ log(1 + μ²/σ²) + β·max(0, BOPs / (BOPs_fp32 / R) − 1)

where BOPs_l = MACs_l·(1 − p_{l−1})·(1 − p_l)·b_l·a_l (eqs. 14-16): p_l is
layer l's pruned fraction of output channels and p_{l−1} that of the layer
feeding its input channels (see `input_links`; 0 if none), a_l the stored
width of its input (32 when float). The hinge on the budget R replaces the
paper's free β·BOPs, so a user asks for a BOPs reduction.

Activations (`ActivationQuantizer`): each compressed layer's input (a tap,
`graph.taps`) gets the same learned range with t = 1 and q_s = 0, unsigned
0..q_m where the first training samples were never negative (after a Relu),
else ±q_m; q_m starts at the fp32 maximum there, the bits at `act_bits` (8,
the paper's input width), learned down to `act_min_bits` (4). They are
written as QuantizeLinear → DequantizeLinear → Clip, and stay in the
retraining, frozen, so it trains against the inputs the file will have.

The BOPs term counts what the export will have, so the budget is met by the
model written: the pruned fraction is the hard count of gates below α_th,
with the gradient of σ((ln α − ln α_th)/T) (the log-domain form of eq. 19,
T wide enough that gates far from the threshold still feel the budget), and
the bits are the stored width ⌈log2(2·⌊q_m^t/d⌉ + 1)⌉ with the gradient of
eq. 3. Without a usable gate gradient the budget can only be met by bits, and
the middle layers collapse to 2 bits; so the bits have a floor (`min_bits`, 3)
and channels must go. Power-of-two bits (Alg. 2): b' = 2^⌊log2 b⌋, at least
the power of two ≥ min_bits, and d' = q_m^t/(2^{b'−1} − 1) in the forward pass
(q_m/(2^{b'} − 1) unsigned, so the largest code is exactly 2^{b'} − 1 [D]).

Export: the stored weight is sgn·d·k (k integer) times the gate μ: codes k,
one step d·|μ_j| per channel; pruned channels get code 0 and their bias is
multiplied by μ like the others. A pruned channel then outputs exactly 0, so
the matching input columns of the layer it feeds are zeroed too (exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..graph.ops import weight_slot
from ..graph.taps import TapQuantizer
from ..errors import OptionError
from ..core.plan import CompressionPlan, LayerPlan

ALPHA_THRESHOLD = 1e-3
MAX_BUDGET_PRUNE = 0.25  # of a layer's kept channels that meet_budget may prune after training
GATE_TEMPERATURE = 4.0  # of the surrogate σ((ln α − ln α_th)/T): the paper gives none; at 0.5 the
# gates (ln α ≈ 4.6 at the start, 11.5 above the threshold) got a gradient of ~1e-10 and never moved
ZERO_PRESERVING = ("Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout",
                   "Flatten")  # a channel of zeros stays a channel of zeros


@dataclass(frozen=True)
class DjpqConfig:
    rate: float = 20.0  # BOPs reduction to reach
    epochs: int = 20
    gamma: float = 1e-3
    beta: float = 5.0
    retrain_epochs: int = 10  # masked retraining with the learned bits and channels frozen
    lr: float = 1e-3  # Adam, for the joint phase and the retraining
    init_bits: int = 8
    min_bits: int = 3  # below this the budget would be met by bits alone, and accuracy collapses
    pow2: bool = False
    lr_scale_quant: float = 10.0  # the quantizers' and gates' learning rates, as multiples of --lr
    lr_scale_gates: float = 10.0
    act_bits: int | None = 8  # the layers' inputs start at this width; None keeps them float (32 in BOPs)
    act_min_bits: int = 4

    def __post_init__(self):
        if not self.rate > 1 or self.epochs < 1 or not 2 <= self.min_bits <= self.init_bits <= 8:
            raise OptionError("DJPQ needs rate > 1, epochs >= 1 and 2 <= min bits <= init bits <= 8")
        if self.act_bits is not None and not 2 <= self.act_min_bits <= self.act_bits <= 8:
            raise OptionError("DJPQ needs 2 <= activation min bits <= activation bits <= 8")


@dataclass(frozen=True)
class InputLink:
    """Layer `producer`'s output channel c feeds input columns c·repeat .. (c+1)·repeat − 1
    of the consumer's weight along `axis` (repeat > 1 after a Flatten)."""

    producer: str
    axis: int
    repeat: int


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _ste(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`value` forward, the gradient of `surrogate` backward."""
    return surrogate + (value - surrogate).detach()


def _largest_code(bits, signed: bool):
    """m, the largest code of `bits`: 2^(b−1) − 1 signed (±m), 2^b − 1 unsigned (0..m)."""
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


class RangeQuantizer(nn.Module):
    """DJPQ's learned range: the cap q_m^t, the step d and the bits they give (eqs. 3-4,
    b = log2(q_m^t/d + 1) + 1 signed, log2(q_m^t/d + 1) unsigned), min_bits to 8 bits."""

    def __init__(self, amax: float, init_bits: int, pow2: bool, min_bits: int, signed: bool = True,
                 learn_t: bool = True):
        super().__init__()
        amax = amax or 1.0
        self.signed = signed
        self.log_q_m = nn.Parameter(torch.tensor(math.log(amax)))  # Adam's steps are then relative
        self.log_d = nn.Parameter(torch.tensor(math.log(amax / _largest_code(init_bits, signed))))
        if learn_t:
            self.t = nn.Parameter(torch.tensor(1.0))
        else:  # activations: t = 1 (METHODS §5)
            self.register_buffer("t", torch.tensor(1.0))
        self.pow2 = pow2
        self.min_bits = min_bits

    def cap(self) -> torch.Tensor:
        return torch.exp(self.log_q_m * self.t)

    def _d(self) -> torch.Tensor:  # min_bits to 8 bits
        cap = self.cap()
        return torch.clamp(torch.exp(self.log_d), min=cap / _largest_code(8, self.signed),
                           max=cap / _largest_code(self.min_bits, self.signed))

    def step(self) -> torch.Tensor:
        d = self._d()
        if self.pow2:  # Alg. 2, forward only
            floor = 2 ** math.ceil(math.log2(self.min_bits))
            bits = torch.clamp(2.0 ** torch.floor(torch.log2(self.bits().detach())), min=floor)
            d = d + (self.cap() / _largest_code(bits, self.signed) - d).detach()
        return d

    def bits(self) -> torch.Tensor:
        return torch.log2(self.cap() / self._d() + 1) + (1 if self.signed else 0)

    def stored_bits(self) -> torch.Tensor:
        """The width the export stores, ⌈log2(2m + 1)⌉ signed or ⌈log2(m + 1)⌉ unsigned for the
        largest code m, with the gradient of eqs. 3-4."""
        largest = torch.round(self.cap() / self.step()).detach()
        return _ste(torch.ceil(torch.log2((2 if self.signed else 1) * largest + 1)), self.bits())


class ActivationQuantizer(RangeQuantizer):
    """DJPQ's quantizer on a layer's input (t = 1, q_s = 0): x_q = d·⌊clip(x, lo, q_m)/d⌉ with
    lo = −q_m, or 0 where the input was never negative on the first training samples (after a
    Relu); written as QuantizeLinear → DequantizeLinear → Clip (`graph.taps.quantize_taps`)."""

    def __init__(self, low: float, high: float, init_bits: int, pow2: bool, min_bits: int):
        signed = low < 0
        super().__init__(max(abs(low), abs(high)), init_bits, pow2, min_bits, signed, learn_t=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cap, step = self.cap(), self.step()
        clipped = torch.minimum(torch.maximum(x, -cap) if self.signed else torch.clamp(x, min=0), cap)
        return step * _round_ste(clipped / step)

    def written(self, tap: str) -> TapQuantizer:
        with torch.no_grad():
            step = self.step()
            return TapQuantizer(tap, float(step), int(torch.round(self.cap() / step)), self.signed)


class LayerQuantizer(RangeQuantizer):
    """The learnable quantizer and channel gates of one weight."""

    def __init__(self, values: np.ndarray, axis: int | None, init_bits: int, pow2: bool, min_bits: int = 2,
                 channel_scale: np.ndarray | None = None, scale_axis: int = 0):
        # a fixed per-output-channel factor divided out before quantizing and multiplied back after:
        # a folded BatchNormalization's scale, which one learned range could not code
        scale_shape = [1] * values.ndim
        if channel_scale is not None:
            scale_shape[scale_axis % values.ndim] = -1
            channel_scale = np.where(np.abs(channel_scale) > 0, channel_scale, 1.0)
        scale = torch.tensor(np.ones(1) if channel_scale is None else channel_scale,
                             dtype=torch.float32).reshape(scale_shape)
        super().__init__(float(np.abs(values / scale.numpy()).max()), init_bits, pow2, min_bits)
        self.register_buffer("channel_scale", scale)
        self.axis = axis
        channels = values.shape[axis] if axis is not None else 1
        self.mu = nn.Parameter(torch.ones(channels))
        self.log_var = nn.Parameter(torch.full((channels,), math.log(1e-2)))
        self.shape = [1] * values.ndim
        if axis is not None:
            self.shape[axis % values.ndim] = -1
        self.z = self.mu.detach()  # the gate of the current forward pass (see sample_gate)

    def alpha(self) -> torch.Tensor:
        return self.mu ** 2 / torch.exp(self.log_var)

    def kept(self) -> torch.Tensor:
        return self.alpha() >= ALPHA_THRESHOLD

    def sample_gate(self, training: bool) -> None:
        noise = torch.randn_like(self.mu) * torch.exp(0.5 * self.log_var) if training else 0.0
        self.z = self.mu + noise

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        w = w / self.channel_scale
        y = torch.minimum(torch.clamp(w.abs(), min=1e-12) ** self.t, self.cap())
        return torch.sign(w) * _round_ste(y / self.step())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.z.reshape(self.shape) * self.codes(w) * self.step() * self.channel_scale

    def density(self) -> torch.Tensor:
        """The fraction of channels kept, with the surrogate's gradient."""
        log_alpha = torch.log(self.alpha() + 1e-30)
        soft = torch.sigmoid((log_alpha - math.log(ALPHA_THRESHOLD)) / GATE_TEMPERATURE).mean()
        return _ste(self.kept().float().mean(), soft)


def _bias_names(layer) -> list[str]:
    """Biases of the layer's uses (the op's bias input): gated with the output channels."""
    names = set()
    for node, slot in layer.uses:
        bias = weight_slot(node.op, slot).bias_input
        if bias is not None and len(node.inputs) > bias and node.inputs[bias].name:
            names.add(node.inputs[bias].name)
    return sorted(names)


def _input_axis(node, slot: int, ndim: int) -> int | None:
    """The weight axis of a use's input channels (None: no plain channel layout)."""
    return weight_slot(node.op, slot).in_axis(node.attrs, ndim)


def input_links(layers, axes: dict[str, int | None], shapes: dict[str, tuple[int, ...]]) -> dict[str, InputLink]:
    """Per layer, the gated layer whose output channels are its input channels, where the
    path between them only has ops that keep a channel of zeros zero (so zeroing the
    matching input columns of a pruned channel is exact). `axes`: the gated output axes."""
    by_node = {id(node): l for l in layers if len(l.uses) == 1 for node, _ in l.uses}
    links = {}
    for layer in layers:
        if len(layer.uses) != 1:
            continue
        node, slot = layer.uses[0]
        axis = _input_axis(node, slot, layer.values.ndim)
        if axis is None:
            continue
        tensor, repeat = node.inputs[0], 1
        while len(tensor.inputs) == 1 and tensor.inputs[0].op in ZERO_PRESERVING:
            op = tensor.inputs[0]
            if op.op == "Flatten":
                shape = shapes.get(op.inputs[0].name)
                if op.attrs.get("axis", 1) != 1 or shape is None:
                    break
                repeat *= int(np.prod(shape[2:]))
            tensor = op.inputs[0]
        producer = by_node.get(id(tensor.inputs[0])) if len(tensor.inputs) == 1 else None
        if producer is None or axes.get(producer.name) is None or tensor.inputs[0].outputs[0] is not tensor:
            continue
        channels = producer.values.shape[axes[producer.name]]
        if channels * repeat == layer.values.shape[axis] and shapes.get(tensor.name, (0, 0))[1] == channels:
            links[layer.name] = InputLink(producer.name, axis, repeat)
    return links


def zero_inputs(codes: np.ndarray, link: InputLink, kept: np.ndarray) -> np.ndarray:
    """`codes` with the input columns fed by pruned producer channels set to 0."""
    view = [1] * codes.ndim
    view[link.axis] = -1
    return codes * np.repeat(kept, link.repeat).reshape(view)


class DjpqState:
    """The quantizers of every layer, attached to the module, and the DJPQ regulariser."""

    def __init__(self, module, layers, macs: dict[str, int], config: DjpqConfig,
                 shapes: dict[str, tuple[int, ...]] | None = None, channel_scales: dict | None = None,
                 taps: dict[str, tuple[str, ...]] | None = None, samples: list[np.ndarray] | None = None):
        """`channel_scales`: weight name -> per-output-channel factors folded into it (graph.fold).
        `taps` (`graph.taps.tap_layer_inputs`, tap -> the layers reading it) get activation
        quantizers, their ranges set from the module's fp32 values on `samples` (the first inputs)."""
        self.module, self.layers, self.config = module, layers, config
        self.inputs = _activation_quantizers(module, taps or {}, samples, config) if config.act_bits else {}
        self.input_taps = {}  # layer -> the taps of its inputs
        for tap, names in (taps or {}).items():
            for name in names if tap in self.inputs else ():
                self.input_taps.setdefault(name, []).append(tap)
        self.quantizers = {}
        channel_scales = self.channel_scales = channel_scales or {}
        for layer in layers:
            axis = layer.axis if layer.groups == 1 else None
            self.quantizers[layer.name] = LayerQuantizer(layer.values, axis, config.init_bits, config.pow2,
                                                         config.min_bits, channel_scales.get(layer.name),
                                                         layer.axis)
        self.links = input_links(layers, {n: q.axis for n, q in self.quantizers.items()}, shapes or {})
        module.djpq = nn.ModuleList(self.quantizers.values())  # so the optimiser trains them
        module.djpq_inputs = nn.ModuleList(self.inputs.values())
        module.lr_scales = {id(p): config.lr_scale_gates if name in ("mu", "log_var") else config.lr_scale_quant
                            for q in [*self.quantizers.values(), *self.inputs.values()]
                            for name, p in q.named_parameters()}
        module.tensor_transform.update(self.inputs)
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
        """Remove the weight quantizers from the module (after `export`); the activation
        quantizers stay, frozen, so the retraining sees the inputs the written model has."""
        for name in list(self.module.weight_transform):
            del self.module.weight_transform[name]
        self.module.pre_forward.remove(self.sample)
        del self.module.djpq
        for q in self.inputs.values():
            q.requires_grad_(False)
        self.module.lr_scales = {}

    def input_bits(self, name: str) -> torch.Tensor:
        """The stored width of layer `name`'s input: its activation quantizers' widest, or 32."""
        taps = self.input_taps.get(name)
        if not taps:
            return torch.tensor(32.0)
        return torch.stack([self.inputs[t].stored_bits() for t in taps]).max()

    def tap_quantizers(self) -> list[TapQuantizer]:
        """What each tap is written as."""
        return [q.written(tap) for tap, q in self.inputs.items()]

    def sample(self) -> None:
        for q in self.quantizers.values():
            q.sample_gate(self.module.training)

    def bops(self) -> torch.Tensor:
        """Eqs. 15-16 at the stored bits and the kept channels (in and out), gradients by surrogates."""
        density = {name: q.density() for name, q in self.quantizers.items()}
        one = torch.tensor(1.0)
        terms = [density[l.name] * density.get(getattr(self.links.get(l.name), "producer", None), one)
                 * self.quantizers[l.name].stored_bits() * self.input_bits(l.name) for l in self.layers]
        return (self.macs * torch.stack(terms)).sum()

    def bops_ratio(self) -> float:
        with torch.no_grad():
            return 1024 * float(self.macs.sum()) / float(self.bops())

    def penalty(self) -> torch.Tensor:
        vib = sum(torch.log1p(q.alpha()).sum() for q in self.quantizers.values())
        return self.config.gamma * vib + self.config.beta * torch.relu(self.bops() / self.budget - 1)

    def meet_budget(self) -> int:
        """Prune the least informative channels (lowest α) that feed another layer until the
        BOPs are within the budget, so the export meets it; returns how many were pruned.

        At most MAX_BUDGET_PRUNE of a layer's channels go this way, and none at all when even
        that would leave the budget missed: pruning half a network's channels after training
        to come closer to a budget it still misses only destroys it (PaddleOCR's classifier:
        top-1 agreement 0.51)."""
        producers = {link.producer for link in self.links.values()}
        with torch.no_grad():
            if self.bops() <= self.budget:
                return 0
            saved = {name: q.mu.clone() for name, q in self.quantizers.items()}
            floor = {name: int(q.kept().sum()) - int(MAX_BUDGET_PRUNE * int(q.kept().sum()))
                     for name, q in self.quantizers.items()}
            pruned = 0
            while self.bops() > self.budget:
                candidates = [(float(q.alpha()[i]), name, i) for name, q in self.quantizers.items()
                              if name in producers and int(q.kept().sum()) > max(1, floor[name])
                              for i in torch.nonzero(q.kept()).flatten().tolist()]
                if not candidates:
                    for name, q in self.quantizers.items():
                        q.mu.copy_(saved[name])
                    return 0
                _, name, i = min(candidates)
                self.quantizers[name].mu[i] = 0.0
                pruned += 1
        return pruned

    def export(self) -> tuple[dict[str, np.ndarray], CompressionPlan]:
        """Stored values (codes x channel steps) of every weight and bias, and the plan giving them."""
        arrays, plans = {}, []
        channel_scales = self.channel_scales
        with torch.no_grad():
            kept = {name: q.kept().numpy() for name, q in self.quantizers.items()}
            for layer in self.layers:
                q = self.quantizers[layer.name]
                q.mu[~q.kept()] = 0.0  # the torch module then matches the export
                weight = self.module.parameter(layer.name)
                codes = (q.codes(weight) * torch.sign(q.mu).reshape(q.shape)).numpy()
                if layer.name in self.links:
                    link = self.links[layer.name]
                    codes = zero_inputs(codes, link, kept[link.producer])
                if q.axis is None:
                    codes = codes * (q.mu.item() != 0)
                gates = q.mu.abs().reshape(q.shape)
                scaled = layer.name in channel_scales
                steps = (q.step() * gates * q.channel_scale).numpy().astype(np.float32)
                steps = np.where(steps > 0, steps, float(q.step()) * q.channel_scale.abs().numpy())
                axis = layer.axis if scaled else q.axis
                steps = steps.reshape(-1) if axis is not None else steps.reshape(())
                view = steps.reshape([-1 if i == axis % codes.ndim else 1 for i in range(codes.ndim)]) \
                    if axis is not None else steps
                arrays[layer.name] = (codes * view).astype(np.float32)
                for bias in _bias_names(layer):
                    if bias in self.module.named_weights():
                        arrays[bias] = (self.module.parameter(bias) * q.mu).numpy()
                plans.append(LayerPlan(layer.name, codes != 0, float(np.median(steps)), keep_survivors=False,
                                       channel_steps=steps if axis is not None else None,
                                       channel_axis=axis, activation_bits=float(self.input_bits(layer.name))))
            bits = {l.name: float(self.quantizers[l.name].bits()) for l in self.layers}
            channels = {name: [int(k.sum()), int(k.size)] for name, k in kept.items()}
            inputs = {tap: int(q.stored_bits()) for tap, q in self.inputs.items()}
        return arrays, CompressionPlan(tuple(plans), "djpq", {"learned_bits": bits, "kept_channels": channels,
                                                              "learned_input_bits": inputs,
                                                              "bops_ratio_learned": self.bops_ratio()})


def _activation_quantizers(module, taps: dict[str, tuple[str, ...]], samples: list[np.ndarray] | None,
                           config: DjpqConfig, batch: int = 64) -> dict[str, ActivationQuantizer]:
    """One quantizer per tap, its range the fp32 minimum and maximum there on `samples`."""
    if not taps or not samples or not len(samples[0]):
        return {}
    low = {tap: math.inf for tap in taps}
    high = {tap: -math.inf for tap in taps}

    def recorder(tap):
        def record(x):
            low[tap], high[tap] = min(low[tap], float(x.min())), max(high[tap], float(x.max()))
            return x
        return record

    saved = dict(module.tensor_transform)
    module.tensor_transform.update({tap: recorder(tap) for tap in taps})
    module.eval()
    with torch.no_grad():
        for i in range(0, len(samples[0]), batch):
            module(*[torch.from_numpy(s[i:i + batch]) for s in samples])
    module.tensor_transform.clear()
    module.tensor_transform.update(saved)
    return {tap: ActivationQuantizer(low[tap], high[tap], config.act_bits, config.pow2, config.act_min_bits)
            for tap in taps if math.isfinite(low[tap]) and math.isfinite(high[tap])}
