"""OPQ's fine-tuning (METHODS.md §2d): masks, steps and channel ranges frozen, straight-through.

Forward:  Ŵ = M ∘ Δ·clip(q(W), −m, m),  q(W) = sgn(W)·max(1, ⌊|W|/Δ + ½⌋)
Backward: ∂ℓ/∂W = M ∘ ∂ℓ/∂Ŵ  (straight-through estimator)

m is each channel's largest code at the start, so the rate cannot drift.
The latent float W is trained; the stored codes are those of the final Ŵ.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.plan import LayerPlan
from ..core.quant import quantize_codes


def channel_limits(codes: np.ndarray, axis: int | None, groups: int = 1) -> np.ndarray:
    """Each weight's channel's largest |code| (per tensor when the channel layout is grouped)."""
    mags = np.abs(codes)
    if axis is None or groups > 1:
        return np.full(codes.shape, mags.max(initial=0))
    others = tuple(i for i in range(codes.ndim) if i != axis % codes.ndim)
    return np.broadcast_to(mags.max(axis=others, keepdims=True), codes.shape).copy()


def masked_quantizer(values: np.ndarray, plan: LayerPlan, axis: int | None, groups: int):
    """The forward transform Ŵ(W) of one layer, with a straight-through gradient."""
    steps = plan.steps_for(values.shape)
    codes = quantize_codes(values, plan.mask, steps, plan.keep_survivors, plan.max_code)
    limit = torch.from_numpy(channel_limits(codes, axis, groups).astype(np.float32))
    mask = torch.from_numpy(plan.mask.astype(np.float32))
    step = torch.from_numpy(np.broadcast_to(np.asarray(steps, np.float32), values.shape).copy())
    floor = 1.0 if plan.keep_survivors else 0.0

    def transform(w: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.floor(w.abs() / step + 0.5), min=floor)
        q = torch.minimum(q, limit) * torch.sign(w)
        return mask * (w + (q * step - w).detach())

    return transform
