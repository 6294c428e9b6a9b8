"""Per-channel steps for layers whose channels have very different ranges.

OPQ shares one step across a layer's channels. On real networks some layers
have outlier channels (a transformer FFN output with one channel 40x wider
than the median): one step then either wastes most codes on the outlier or
rounds the other channels to zero. Such layers are solved on weights
normalised by each channel's range, and their plan gets one step per channel
(DequantizeLinear with an axis). `granularity`: "layer" (always shared, the
paper's method), "channel" (always per channel) or "auto" (per channel where
the largest channel range exceeds SPREAD x the median).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import OptionError
from .plan import CompressionPlan
from .quant import to_channels

GRANULARITIES = ("auto", "layer", "channel")
SPREAD = 4.0


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise OptionError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def resolved_granularity(granularity: str, bits: float | None, prune: float | None) -> str:
    """"auto" is "channel" for a fixed plan of 8 bits and no pruning (the default command).

    There the shared step only costs accuracy (on a real text recognizer 1.4 points
    of character accuracy that per-channel int8 rounding keeps) for a few bits of
    steps per channel. At fewer bits or with pruning, OPQ's shared step solves
    better on small nets (the bundled lenet5 at --prune 0.8 --bits 4: 92.0 % with
    the outlier test, 26.0 % per channel), so the outlier test stays there.
    """
    if granularity == "auto" and bits is not None and bits >= 8 and not prune:
        return "channel"
    return granularity


def channel_ranges(values: np.ndarray, axis: int | None, groups: int, granularity: str) -> np.ndarray | None:
    """Each output channel's max |w| when the layer should get per-channel steps, else None."""
    if granularity == "layer" or axis is None or groups > 1 or values.ndim < 2:
        return None
    alpha = to_channels(np.abs(values), axis, groups).max(axis=1).astype(np.float64)
    positive = alpha[alpha > 0]
    if positive.size < 2 or (granularity == "auto" and positive.max() <= SPREAD * np.median(positive)):
        return None
    return np.where(alpha > 0, alpha, 1.0)


@dataclass
class NormalizedLayer:
    """A layer's weights divided by their channel ranges (what the solvers see)."""

    name: str
    values: np.ndarray
    axis: int | None
    groups: int
    extra_param_bits: int = 0  # a float step per channel instead of one per layer


def normalize(layers, granularity: str) -> tuple[list, dict[str, np.ndarray]]:
    """The layers as the solvers should see them, and the channel ranges used."""
    ranges, out = {}, []
    for layer in layers:
        alpha = channel_ranges(layer.values, layer.axis, layer.groups, granularity)
        if alpha is None:
            out.append(layer)
            continue
        view = [1] * layer.values.ndim
        view[layer.axis % layer.values.ndim] = -1
        ranges[layer.name] = alpha
        out.append(NormalizedLayer(layer.name, (layer.values / alpha.reshape(view)).astype(np.float32),
                                   layer.axis, layer.groups, 32 * (alpha.size - 1)))
    return out, ranges


def rescale(plan: CompressionPlan, layers, ranges: dict[str, np.ndarray]) -> CompressionPlan:
    """Turn the normalised layers' shared steps into per-channel steps in real units."""
    axes = {l.name: l.axis % l.values.ndim for l in layers}
    plans = []
    for p in plan.layers:
        if p.name in ranges:
            steps = (p.step * ranges[p.name]).astype(np.float32)
            p = replace(p, channel_steps=steps, channel_axis=axes[p.name], step=float(np.median(steps)))
        plans.append(p)
    return replace(plan, layers=tuple(plans))
