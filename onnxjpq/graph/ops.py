"""Per-op facts: which input of which op is a weight, its channel axes, its bias, its MACs rule.

Adding an op means adding one `OpSpec` here (METHODS.md §6, table of axes);
nothing outside this module compares op types to learn these facts.
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
    macs: str = "output"  # see MACS_RULES
    bias_input: int | None = None  # the op's input holding this weight's per-output-channel bias
    in_axis: Callable[[Mapping, int], int | None] = lambda attrs, rank: None  # input-channel axis, if plain


# How a use's dense multiply-accumulates are counted (graph.macs):
MACS_RULES = {
    "output": "output elements x weights per output channel",
    "input": "input elements x weights per input channel (ConvTranspose)",
    "recurrent": "every step multiplies the whole matrix: output elements / (directions x hidden) x weights",
    "none": "a table lookup multiplies nothing",
}


def _const(axis: int) -> Callable[[Mapping, int], int]:
    return lambda attrs, rank: axis


RECURRENT_OPS = ("LSTM", "GRU", "RNN")

WEIGHT_SLOTS: tuple[OpSpec, ...] = (
    OpSpec("Conv", 1, _const(0), min_rank=3, bias_input=2,
           in_axis=lambda a, r: 1 if a.get("group", 1) == 1 else None),
    OpSpec("ConvTranspose", 1, _const(1), min_rank=3, grouped_axis=True, macs="input", bias_input=2),
    OpSpec("Gemm", 1, lambda a, r: 0 if a.get("transB", 0) else 1, max_rank=2, bias_input=2,
           in_axis=lambda a, r: 1 if a.get("transB", 0) else 0),
    OpSpec("Gemm", 0, lambda a, r: 1 if a.get("transA", 0) else 0, max_rank=2),
    OpSpec("MatMul", 1, lambda a, r: r - 1, in_axis=lambda a, r: 0 if r == 2 else None),
    OpSpec("MatMul", 0, _const(0), max_rank=2),
    OpSpec("Gather", 0, lambda a, r: a.get("axis", 0) % r, embedding=True, macs="none"),
    # recurrent weights W [directions, gates*hidden, input] and R [directions, gates*hidden, hidden]
    *(OpSpec(op, slot, _const(1), min_rank=3, max_rank=3, macs="recurrent")
      for op in RECURRENT_OPS for slot in (1, 2)),
)

WEIGHT_OPS = frozenset(spec.op for spec in WEIGHT_SLOTS)


def weight_slot(op: str, input_index: int) -> OpSpec | None:
    """The spec for `op`'s input `input_index`, or None if it is no weight slot."""
    for spec in WEIGHT_SLOTS:
        if spec.op == op and spec.input_index == input_index:
            return spec
    return None


def weight_ops_text() -> str:
    """The ops whose weights onnxjpq compresses, for messages ("Conv, ..., RNN")."""
    ops = list(dict.fromkeys(spec.op for spec in WEIGHT_SLOTS if not spec.embedding))
    return ", ".join(ops[:-1]) + " or " + ops[-1]
