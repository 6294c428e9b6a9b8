"""Capture of each compressible layer's inputs (runtime.layer_view says which tensors hold
its columns), as the statistics the layer-wise solvers need (METHODS.md §7a): Σxxᵀ and Σx
per Hessian group, over the calibration data in batches of bounded memory, and paired with
the fp32 model's inputs for the fp32 target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..core.hessian import MAX_ELEMENTS, InputStats, conv_columns, merge_into, merge_stats
from ..errors import DataError
from .data import Dataset
from .layer_view import HiddenStates, LayerView, Use
from .probe import Probe, Template, batches

MAX_CHUNK_ELEMENTS = 1 << 26  # the most float64 columns one chunk holds (512 MiB)


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class PairStats:
    """Statistics of a layer's inputs x̂ in the partly compressed model against its fp32 inputs x
    on the same samples: `hat` (Σ x̂x̂ᵀ, Σ x̂), `fp32` (Σ xxᵀ, Σ x) and `cross` Σ x x̂ᵀ [groups, cols, cols]."""

    hat: InputStats
    fp32: InputStats
    cross: np.ndarray


def use_columns(use: Use, arrays: dict[str, np.ndarray], cols: int) -> Iterator[np.ndarray]:
    """One batch's columns of one consumer, [groups, cols, n] float64 chunks of bounded size."""
    if use.kind == "hidden":
        yield _hidden_columns(use.hidden, arrays)
        return
    x = np.asarray(arrays[use.tensor])
    if use.kind == "conv":
        geometry = use.conv.geometry(tuple(x.shape[2:]))
        for chunk in conv_columns(x, geometry, chunk_elements(geometry.groups, cols)):
            yield np.asarray(chunk, np.float64)
        return
    axis = -1 if x.ndim == 1 else use.feature_axis
    if x.shape[axis] != cols:
        raise ValueError(f"captured {use.tensor} has {x.shape[axis]} features on axis {axis}, the weight {cols}")
    flat = np.moveaxis(x, axis, -1).reshape(-1, cols)
    rows = max(1, chunk_elements(1, cols) // max(cols, 1))
    for lo in range(0, flat.shape[0], rows):
        yield flat[lo:lo + rows].T[None].astype(np.float64)


def chunk_elements(groups: int, cols: int) -> int:
    """Elements of one column chunk: MAX_ELEMENTS, or as many as the Hessians it adds to (each
    chunk's float32 product is widened and added at the Hessians' size, so chunks of fewer
    columns than `cols` would spend more on that than on the product), at most MAX_CHUNK_ELEMENTS."""
    return max(MAX_ELEMENTS, min(groups * cols * cols, MAX_CHUNK_ELEMENTS))


def _hidden_columns(hidden: HiddenStates, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per direction, the previous hidden state of every step (initial_h, or zeros, first)."""
    y = np.asarray(arrays[hidden.output], np.float64)
    y = y if hidden.layout == 0 else y.transpose(1, 2, 0, 3)  # [steps, directions, batch, hidden]
    initial = arrays.get(hidden.initial) if hidden.initial else None
    if initial is None:
        initial = np.zeros(y.shape[1:])
    else:
        initial = np.asarray(initial, np.float64)
        initial = initial if hidden.layout == 0 else initial.transpose(1, 0, 2)
    parts = []
    for d, reverse in enumerate(hidden.reverse):
        steps = [y[1:, d], initial[d][None]] if reverse else [initial[d][None], y[:-1, d]]
        parts.append(np.concatenate(steps).reshape(-1, y.shape[-1]).T)
    return np.stack(parts)


def columns_stats(chunks: Iterable[np.ndarray], means_only: bool = False) -> InputStats | None:
    """Σ x xᵀ (left empty with `means_only`), Σ x and the count of column chunks."""
    total = None
    for c in chunks:
        xxt = np.zeros((c.shape[0], 0, 0)) if means_only else np.matmul(c, c.transpose(0, 2, 1))
        total = add_stats(total, InputStats(xxt, c.sum(axis=2), c.shape[2]))
    return total


def add_stats(total: InputStats | None, part: InputStats | None) -> InputStats | None:
    """Statistics of both (None: nothing yet), summed into `total`'s arrays."""
    if part is None or total is None:
        return part if total is None else total
    return merge_into(total, part)


def _pair_add(total: PairStats | None, hat_chunks, fp32_chunks) -> PairStats | None:
    """Add a batch's paired columns; the chunk products in float32 (sums in float64)."""
    for hat, ref in zip(hat_chunks, fp32_chunks, strict=True):
        hat32, ref32 = hat.astype(np.float32), ref.astype(np.float32)
        part = PairStats(_products(hat32), _products(ref32),
                         np.matmul(ref32, hat32.transpose(0, 2, 1)).astype(np.float64))
        if total is None:
            total = part
        else:
            cross = total.cross
            cross += part.cross
            total = PairStats(merge_into(total.hat, part.hat), merge_into(total.fp32, part.fp32), cross)
        del part
    return total


def _products(c: np.ndarray) -> InputStats:
    return InputStats(np.matmul(c, c.transpose(0, 2, 1)).astype(np.float64), c.sum(axis=2, dtype=np.float64),
                      c.shape[2])


def _batches_of(template: Template, views: Sequence[LayerView], data: Dataset, samples: int, max_bytes: int,
                probe: Probe | None = None):
    probe = probe or Probe(template, [t for v in views for t in v.tensors])
    fixed = probe.fixed_batch
    if fixed and len(data) < fixed:
        raise DataError(f"the model takes batches of {fixed} samples; the calibration data has {len(data)}")
    return probe, batches(data, samples, probe.batch_size(data, max_bytes), whole=bool(fixed))


def capture_stats(template: Template, views: Sequence[LayerView], data: Dataset, samples: int,
                  weights: dict[str, np.ndarray], max_bytes: int, means_only: bool = False
                  ) -> dict[str, InputStats]:
    """Each view's input statistics over the first `samples` calibration samples, the template
    run with `weights` (unlisted ones keep the template's values), in batches of about
    `max_bytes` of captured tensors."""
    if not views:
        return {}
    probe, feeds = _batches_of(template, views, data, samples, max_bytes)
    totals: dict[str, InputStats] = {}
    for batch in feeds:
        arrays = probe.run(batch, weights)
        for view in views:
            for use in view.uses:
                part = columns_stats(use_columns(use, arrays, view.cols), means_only)
                totals[view.name] = add_stats(totals.get(view.name), part)
        del arrays
    return totals


def capture_pairs(template: Template, views: Sequence[LayerView], data: Dataset, samples: int,
                  weights: dict[str, np.ndarray], max_bytes: int, check_every: int = 0
                  ) -> tuple[dict[str, PairStats], dict[str, PairStats]]:
    """`capture_stats` of the model with `weights` paired with the fp32 model's, batch by batch
    (two runs of each batch): what an fp32 target from compressed inputs needs. With
    `check_every` k, every k-th of the first `samples` samples goes to a second set (for a
    held-out check), returned apart; else that set is empty."""
    if not views:
        return {}, {}
    probe = Probe(template, [t for v in views for t in v.tensors])
    n, unit = min(samples, len(data)), probe.fixed_batch or 1  # a fixed batch size splits by whole batches
    n = max(n - n % unit, min(unit, len(data)))
    is_check = (np.arange(n) // unit) % check_every == check_every - 1 if check_every > 1 else np.zeros(n, bool)
    if is_check.all() or not is_check.any() or n < check_every * unit:
        is_check = np.zeros(n, bool)
    out = []
    for chosen in (~is_check, is_check):
        totals: dict[str, PairStats] = {}
        if chosen.any():
            part = Dataset({k: v[:n][chosen] for k, v in data.inputs.items()}, None)
            probe, feeds = _batches_of(template, views, part, n, max_bytes // 2, probe)
            for batch in feeds:
                hat, ref = probe.run(batch, weights), probe.run(batch, {})
                for view in views:
                    for use in view.uses:
                        totals[view.name] = _pair_add(totals.get(view.name), use_columns(use, hat, view.cols),
                                                      use_columns(use, ref, view.cols))
                del hat, ref
        out.append(totals)
    return out[0], out[1]


def merge_pairs(a: PairStats, b: PairStats | None) -> PairStats:
    """Both sets' paired statistics."""
    if b is None:
        return a
    return PairStats(merge_stats(a.hat, b.hat), merge_stats(a.fp32, b.fp32), a.cross + b.cross)
