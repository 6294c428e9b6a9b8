"""Per-op facts: which input of which op is a weight, and its output-channel axis.

Adding an op means adding one `OpSpec` here (METHODS.md §6, table of axes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class OpSpec:
    """A weight slot: `op`'s input number `input_index` may hold a weight.

    `out_axis(attrs, rank)` gives the output-channel axis of a weight of that
    rank in that slot; `groups(attrs)` how many groups the op splits channels
    into (it only matters for ConvTranspose, whose channel axis is split).
    """

    op: str
    input_index: int
    out_axis: Callable[[Mapping, int], int]
    min_rank: int = 2
    max_rank: int | None = None
    grouped_axis: bool = False
    embedding: bool = False  # a lookup table (no MACs): compressed only when asked for


def _const(axis: int) -> Callable[[Mapping, int], int]:
    return lambda attrs, rank: axis


RECURRENT_OPS = ("LSTM", "GRU", "RNN")

WEIGHT_SLOTS: tuple[OpSpec, ...] = (
    OpSpec("Conv", 1, _const(0), min_rank=3),
    OpSpec("ConvTranspose", 1, _const(1), min_rank=3, grouped_axis=True),
    OpSpec("Gemm", 1, lambda a, r: 0 if a.get("transB", 0) else 1, max_rank=2),
    OpSpec("Gemm", 0, lambda a, r: 1 if a.get("transA", 0) else 0, max_rank=2),
    OpSpec("MatMul", 1, lambda a, r: r - 1),
    OpSpec("MatMul", 0, _const(0), max_rank=2),
    OpSpec("Gather", 0, lambda a, r: a.get("axis", 0) % r, embedding=True),
    # recurrent weights W [directions, gates*hidden, input] and R [directions, gates*hidden, hidden]
    *(OpSpec(op, slot, _const(1), min_rank=3, max_rank=3) for op in RECURRENT_OPS for slot in (1, 2)),
)

WEIGHT_OPS = frozenset(spec.op for spec in WEIGHT_SLOTS)


def weight_slot(op: str, input_index: int) -> OpSpec | None:
    """The spec for `op`'s input `input_index`, or None if it is no weight slot."""
    for spec in WEIGHT_SLOTS:
        if spec.op == op and spec.input_index == input_index:
            return spec
    return None
