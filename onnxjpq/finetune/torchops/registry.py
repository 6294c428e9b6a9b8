"""The op registry: one `OpSpec` per ONNX op type, filled by `@register`.

An op's `run(node, *inputs)` takes the node (attributes, opset, output count)
and its input tensors (None for an omitted optional input) and returns its
outputs as a list. `check(node)` says, before anything runs, why this node
cannot run (a short phrase), or returns None. Control flow is `scoped`: it is
also given the values of the enclosing graph, which its subgraphs read. An op
that reads 2- and 4-bit integer types is `narrow`: it is given such tensors as
they are; every other op gets their int8/uint8 values (`dtypes.widened`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Node:
    """What an op sees of its node: strings are decoded, tensors are numpy arrays, graphs are compiled."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 22

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def ints(self, name: str, default: list[int] | None = None) -> list[int] | None:
        value = self.attrs.get(name)
        return list(value) if value is not None else default

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    def wants(self, index: int) -> bool:
        """Whether output `index` is used (present and named)."""
        return index < len(self.outputs) and bool(self.outputs[index])


Check = Callable[[Node], "str | None"]


@dataclass(frozen=True)
class OpSpec:
    run: Callable[..., list]
    check: Check | None = None
    scoped: bool = False
    narrow: bool = False


OPS: dict[str, OpSpec] = {}


def register(*op_types: str, check: Check | None = None, scoped: bool = False, narrow: bool = False):
    """Register the decorated function as the torch implementation of `op_types`."""
    def decorate(fn):
        for op_type in op_types:
            if op_type in OPS:
                raise ValueError(f"{op_type} is registered twice")
            OPS[op_type] = OpSpec(fn, check, scoped, narrow)
        return fn
    return decorate


def elementwise(op_types: dict[str, Callable]) -> None:
    """Register ops whose outputs are `fn(*inputs)` with no attributes."""
    for op_type, fn in op_types.items():
        register(op_type)(lambda node, *xs, _fn=fn: [_fn(*xs)])
