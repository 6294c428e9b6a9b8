"""The hand-off between solvers and rewriters.

A solver returns a `CompressionPlan`: per layer, which weights stay (`mask`)
and the quantization step they share (`step`). Rewriters only read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .quant import magnitude_mask


class WeightArray(Protocol):
    """What a solver needs to know of a layer: its values and channel layout."""

    name: str
    values: np.ndarray
    axis: int | None
    groups: int
    extra_param_bits: int  # bits of per-channel steps beyond the layer's one (core.channels)


@dataclass(frozen=True)
class LayerPlan:
    name: str
    mask: np.ndarray | None  # bool, same shape as the weight; True = kept; None: see prune_count
    step: float  # shared quantization step; 0 when nothing is kept
    keep_survivors: bool = True
    fixed: bool = False  # kept at 8 bits, outside the solves (--keep)
    predicted_prune_ratio: float = 0.0  # the Laplace model's ratio for this layer
    max_code: int | None = None  # codes clipped to [-max_code, max_code]; None = no clip
    channel_steps: np.ndarray | None = None  # one step per output channel instead of `step`
    channel_axis: int | None = None
    codes: np.ndarray | None = None  # int32 codes a data-aware solver chose (else rounded from the values)
    bias: np.ndarray | None = None  # corrected bias of the layer's op (bias correction), if any
    activation_bits: float = 32.0  # of the layer's input, in its BOPs (DJPQ quantizes it)
    # the mask's size: with mask None (streaming plans, which keep no masks in memory) the
    # mask is the magnitude mask pruning `prune_count` of the solver-space values
    prune_count: int = 0

    def mask_for(self, solver_values: np.ndarray) -> np.ndarray:
        """The mask, made from the values the solver saw when the plan carries none."""
        return self.mask if self.mask is not None else magnitude_mask(solver_values, self.prune_count)

    def steps_for(self, shape: tuple[int, ...]) -> float | np.ndarray:
        """The step of every weight: the shared step, or the channel steps shaped to broadcast."""
        if self.channel_steps is None:
            return self.step
        view = [1] * len(shape)
        view[self.channel_axis % len(shape)] = -1
        return self.channel_steps.reshape(view)


@dataclass(frozen=True)
class CompressionPlan:
    layers: tuple[LayerPlan, ...]
    method: str
    diagnostics: dict = field(default_factory=dict)

    def by_name(self) -> dict[str, LayerPlan]:
        return {p.name: p for p in self.layers}
