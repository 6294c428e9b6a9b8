"""Resize (opsets 10 to 19: nearest/linear/cubic, every coordinate_transformation_mode and nearest_mode,
antialias, exclude_outside, cubic_coeff_a, extrapolation_value, axes, keep_aspect_ratio_policy) and Upsample.

Resizing is separable: each resized axis is gathered at its taps and summed with
their weights. The taps and weights of an axis are those of onnx's reference
(`onnx.reference.ops.op_resize._interpolate_1d_along_axis`), computed once per
geometry in numpy. Nearest modes gather a single tap. Opset 10 Resize and
Upsample use the asymmetric mapping, nearest rounding down when enlarging
(up when shrinking), as onnxruntime does.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .common import axis, ints
from .registry import register

_MODES = ("nearest", "linear", "cubic")


def _coefficients(mode: str, ratios: np.ndarray, scale: float, a: float, antialias: bool,
                  nearest: str) -> np.ndarray:
    """Weights [out, taps] for ratios in (0, 1] (1 where the source coordinate is a whole pixel)."""
    r = ratios[:, None]
    if mode == "nearest":
        whole = r == 1.0
        up = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": np.zeros_like(whole),
              "ceil": np.ones_like(whole)}[nearest] | whole
        return np.concatenate([~up, up], axis=1).astype(np.float64)
    s = min(scale, 1.0) if antialias else 1.0
    if mode == "linear":
        start = math.floor(-1 / s) + 1
        args = (np.arange(start, 2 - start)[None, :] - r) * s
        w = np.clip(1 - np.abs(args), 0, 1)
    else:
        start = math.floor(-2 / s) + 1
        x = np.abs(s * (np.arange(start, 2 - start)[None, :] - r))
        w = np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                     np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))
    return w / w.sum(axis=1, keepdims=True)


def _source(mode: str, y: np.ndarray, scale: float, n_in: int, n_out: int, roi: tuple[float, float] | None):
    """Source coordinates of output positions y, and which of them fall outside (tf_crop_and_resize)."""
    width = scale * n_in
    if mode == "align_corners":
        return (np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)), None
    if mode == "asymmetric":
        return y / scale, None
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(n_out, (hi - lo) * (n_in - 1) / 2) if width == 1 else y * (hi - lo) * (n_in - 1) / (width - 1)
        x = x + lo * (n_in - 1)
        return x, (x < 0) | (x > n_in - 1)
    if mode == "pytorch_half_pixel":
        return (np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5), None
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5, None
    return (y + 0.5) / scale - 0.5, None


@functools.lru_cache(maxsize=256)
def axis_taps(n_in: int, n_out: int, scale: float, settings: tuple, roi: tuple[float, float] | None):
    """(indices [out, taps], weights [out, taps], outside mask or None) for resizing one axis."""
    mode, transform, nearest, a, antialias, exclude = settings
    x, outside = _source(transform, np.arange(n_out, dtype=np.float64), scale, n_in, n_out, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)
    w = _coefficients(mode, ratios, scale, a, antialias, nearest)
    taps = w.shape[1]
    pad = math.ceil(taps / 2)
    padded = x + pad
    p = np.floor(padded).astype(np.int64)
    frac = padded - p
    if taps % 2 == 0:
        offset = np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    idx = (p + offset)[:, None] + np.arange(taps)[None, :] - pad
    if exclude:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1), w, outside


def _resize_axis(x: torch.Tensor, a: int, idx: np.ndarray, w: np.ndarray, nearest: bool) -> torch.Tensor:
    if nearest:
        chosen = idx[np.arange(len(idx)), w.argmax(axis=1)]
        return x.index_select(a, torch.from_numpy(chosen))
    n_out, taps = idx.shape
    g = x.index_select(a, torch.from_numpy(idx.reshape(-1)))
    g = g.reshape(*x.shape[:a], n_out, taps, *x.shape[a + 1:])
    weights = torch.from_numpy(w).to(x.dtype).reshape(*[1] * a, n_out, taps, *[1] * (x.dim() - a - 1))
    return (g * weights).sum(a + 1)


def _targets(node, x, roi, scales, sizes):
    """Full-rank scales, output sizes and (for tf_crop_and_resize) roi pairs."""
    rank = x.dim()
    axes = [axis(v, rank) for v in node.ints("axes", list(range(rank)))]
    pairs = None
    if roi is not None and roi.numel():
        lo_hi = roi.tolist()
        pairs = {a: (lo_hi[i], lo_hi[i + len(axes)]) for i, a in enumerate(axes)}
    if sizes is not None and sizes.numel():
        wanted = dict(zip(axes, ints(sizes)))
        factors = {a: wanted[a] / x.shape[a] for a in axes}
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = min(factors.values()) if policy == "not_larger" else max(factors.values())
            factors = {a: s for a in axes}
            wanted = {a: int(s * x.shape[a] + 0.5) for a in axes}
    else:
        factors = dict(zip(axes, [float(v) for v in scales.reshape(-1).tolist()]))
        wanted = {a: int(factors[a] * x.shape[a]) for a in axes}
    return factors, wanted, pairs


def _check(node) -> str | None:
    mode = node.attr("mode", "nearest")
    if node.op_type == "Upsample" and mode not in ("nearest", "linear", "bilinear"):
        return f"Upsample with mode {mode!r}"
    if node.op_type == "Resize" and mode not in _MODES:
        return f"Resize with mode {mode!r}"
    return None


def _interpolate(node, x, factors, wanted, pairs, legacy: bool):
    mode = node.attr("mode", "nearest").replace("bilinear", "linear")
    transform = "asymmetric" if legacy else node.attr("coordinate_transformation_mode", "half_pixel")
    work = x if x.is_floating_point() else x.to(torch.float32)
    for a in sorted(factors):
        scale, n_out, roi = factors[a], wanted[a], (pairs or {}).get(a, (0.0, 1.0))
        if math.isclose(scale, 1.0) and n_out == x.shape[a] and roi == (0.0, 1.0):
            continue
        nearest = node.attr("nearest_mode", "round_prefer_floor") if not legacy else (
            "floor" if scale >= 1 else "ceil")
        settings = (mode, transform, nearest, float(node.attr("cubic_coeff_a", -0.75)),
                    bool(node.attr("antialias", 0)), bool(node.attr("exclude_outside", 0)))
        idx, w, outside = axis_taps(work.shape[a], n_out, scale, settings, roi if pairs else None)
        work = _resize_axis(work, a, idx, w, mode == "nearest")
        if outside is not None and outside.any():
            mask = torch.from_numpy(outside).reshape(*[1] * a, n_out, *[1] * (work.dim() - a - 1))
            work = torch.where(mask, torch.tensor(node.attr("extrapolation_value", 0.0), dtype=work.dtype), work)
    if x.is_floating_point():
        return work
    info = torch.iinfo(x.dtype)
    return work.round().clamp(info.min, info.max).to(x.dtype)


@register("Resize", check=_check)
def resize(node, x, roi=None, scales=None, sizes=None):
    if node.opset < 11:  # Resize-10: (X, scales)
        scales, roi = roi, None
    factors, wanted, pairs = _targets(node, x, roi, scales, sizes)
    if node.attr("coordinate_transformation_mode") != "tf_crop_and_resize":
        pairs = None
    return [_interpolate(node, x, factors, wanted, pairs, node.opset < 11)]


@register("Upsample", check=_check)
def upsample(node, x, scales=None):
    given = scales.reshape(-1).tolist() if scales is not None else node.attr("scales")
    factors = {a: float(s) for a, s in enumerate(given)}
    wanted = {a: int(math.floor(s * x.shape[a])) for a, s in factors.items()}
    return [_interpolate(node, x, factors, wanted, None, True)]
