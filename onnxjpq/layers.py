"""Find the compressible weights of a graph.

A weight is a constant float32 tensor (an initializer, or the value of a
Constant node, as some exporters write every weight) feeding one of the slots
of `ops.WEIGHT_SLOTS`. Every candidate that is not compressed is returned with
the reason, so the report can say why.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .ops import OpSpec, weight_slot


KEEP_SHARE = 0.10


@dataclass(frozen=True)
class Selection:
    """Which weights to compress.

    include/exclude: glob patterns matched against weight and node names
    (empty include = all). keep: patterns, or the words "first" and "last",
    for layers kept dense at 8 bits. The default "auto" means "first,last"
    for fixed settings (OPQ), where the first and last layer are the most
    sensitive, and nothing for budgets, whose allocation weighs every layer
    itself.
    min_params: smaller weights stay float.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep: tuple[str, ...] = ("auto",)
    min_params: int = 64
    embeddings: bool = False  # also compress float tables read by Gather (token embeddings)


@dataclass(eq=False)
class WeightLayer:
    """One weight tensor and where it sits in the graph."""

    name: str
    op: str
    values: np.ndarray
    axis: int | None
    groups: int
    constant: gs.Constant
    uses: list[tuple[gs.Node, int]] = field(default_factory=list)
    producer: gs.Node | None = None  # the Constant node holding it, if any
    home: gs.Graph | None = None  # the (sub)graph where a DequantizeLinear for it belongs

    @property
    def node_names(self) -> list[str]:
        return [node.name for node, _ in self.uses]


@dataclass(frozen=True)
class Skipped:
    name: str
    op: str
    shape: tuple[int, ...]
    reason: str


def _weight_constant(tensor) -> tuple[gs.Constant, gs.Node | None] | None:
    if isinstance(tensor, gs.Constant):
        return tensor, None
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        value = producer.attrs.get("value") if producer.op == "Constant" else None
        if isinstance(value, gs.Constant):
            return value, producer
    return None


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    return [graph, *graph.subgraphs(recursive=True)]


def _candidates(graph: gs.Graph) -> dict[str, tuple]:
    """Tensor name → (tensor, constant, producer, [(node, input index, spec, owning graph)])."""
    found: dict[str, tuple] = {}
    for owner in all_graphs(graph):
        for node in owner.nodes:
            for index, tensor in enumerate(node.inputs):
                spec = weight_slot(node.op, index)
                resolved = _weight_constant(tensor) if spec else None
                if resolved is None:
                    continue
                entry = found.setdefault(tensor.name, (tensor, *resolved, []))
                entry[3].append((node, index, spec, owner))
    return found


def _home(graph: gs.Graph, producer: gs.Node | None, slots: list) -> gs.Graph:
    """Where the weight's DequantizeLinear goes: beside its Constant node, in the one
    (sub)graph that uses it, or in the outermost graph, visible to all subgraphs."""
    if producer is not None:
        return next(g for g in all_graphs(graph) if any(n is producer for n in g.nodes))
    owners = {id(slot[3]): slot[3] for slot in slots}
    return next(iter(owners.values())) if len(owners) == 1 else graph


def _refusal(graph: gs.Graph, tensor, constant: gs.Constant, slots: list) -> str | None:
    used_as_weight = {(id(node), index) for node, index, *_ in slots}
    for consumer in tensor.outputs:
        for index, inp in enumerate(consumer.inputs):
            if inp is tensor and (id(consumer), index) not in used_as_weight:
                return f"also feeds {consumer.op} {consumer.name!r}"
    if any(tensor in g.outputs or tensor in g.inputs for g in all_graphs(graph)):
        return "is a graph input or output"
    dtype = np.dtype(constant.dtype) if constant.dtype is not None else None
    if dtype != np.float32:
        return f"dtype {dtype} (only float32 weights are compressed)"
    rank = len(constant.shape)
    for _, _, spec, _ in slots:
        if rank < spec.min_rank or (spec.max_rank is not None and rank > spec.max_rank):
            return f"rank {rank} is not a weight of {spec.op}"
    return None


def _axis(slots: list[tuple[gs.Node, int, OpSpec, gs.Graph]], rank: int) -> tuple[int | None, int]:
    axes = {(spec.out_axis(node.attrs, rank), node.attrs.get("group", 1) if spec.grouped_axis else 1)
            for node, _, spec, _ in slots}
    return axes.pop() if len(axes) == 1 else (None, 1)


def _matches(patterns: tuple[str, ...], names: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def find_layers(graph: gs.Graph, selection: Selection = Selection()
                ) -> tuple[list[WeightLayer], list[Skipped]]:
    """The compressible weights of `graph` in graph order, and the refused ones with reasons."""
    layers, skipped = [], []
    for name, (tensor, constant, producer, slots) in _candidates(graph).items():
        op, shape = slots[0][0].op, tuple(constant.shape)
        names = [name] + [slot[0].name for slot in slots]
        reason = _refusal(graph, tensor, constant, slots)
        if reason is None and not selection.embeddings and all(slot[2].embedding for slot in slots):
            reason = "embedding table (--embeddings compresses it)"
        if reason is None and int(np.prod(shape)) < selection.min_params:
            reason = f"{int(np.prod(shape))} params, below --min-params {selection.min_params}"
        if reason is None and selection.include and not _matches(selection.include, names):
            reason = "not matched by --include"
        if reason is None and _matches(selection.exclude, names):
            reason = "excluded by --exclude"
        if reason is not None:
            skipped.append(Skipped(name, op, shape, reason))
            continue
        axis, groups = _axis(slots, len(shape))
        values = np.asarray(constant.values, dtype=np.float32)
        layers.append(WeightLayer(name, op, values, axis, groups, constant,
                                  [(node, index) for node, index, *_ in slots], producer,
                                  _home(graph, producer, slots)))
    return layers, skipped


def kept_names(layers: list[WeightLayer], selection: Selection, budget: bool = False) -> frozenset[str]:
    """Names of the layers `selection.keep` holds at 8 bits ("first", "last", or patterns;
    "auto" is "first,last" unless `budget`).

    "first" and "last" apply to models of three layers or more, and only to a
    layer holding at most KEEP_SHARE of the weights: keeping a dominant layer
    dense would leave little to compress.
    """
    words = set(selection.keep)
    if "auto" in words and not budget:
        words |= {"first", "last"}
    total = sum(l.values.size for l in layers)
    ends = {"first": layers[:1], "last": layers[-1:]} if len(layers) >= 3 else {}
    keep = {l.name for word, chosen in ends.items() if word in words
            for l in chosen if l.values.size <= KEEP_SHARE * total}
    patterns = tuple(p for p in selection.keep if p not in ("first", "last", "auto"))
    keep |= {l.name for l in layers if _matches(patterns, [l.name, *l.node_names])}
    return frozenset(keep)
