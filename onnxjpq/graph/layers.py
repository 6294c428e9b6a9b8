"""Find the compressible weights of a graph.

A weight is a constant float32 tensor (an initializer, or the value of a
Constant node, as some exporters write every weight) feeding one of the slots
of `ops.WEIGHT_SLOTS`, directly or through a chain of Transpose, Reshape (by a
constant shape), Unsqueeze/Squeeze (constant axes) and Cast nodes
(`MatMul(x, Transpose(W))`, `Gemm(x, Cast(W16))`, `LSTM(x, Unsqueeze(W))`).
Such a weight is compressed where it is stored: its output-channel axis is
mapped back through the chain (Transpose perm; Reshape/Unsqueeze/Squeeze when the channel
dimension survives it), a float16/float64 source is compressed when a Cast
makes it float32 before the slot (so is a bfloat16 or float8 one: ml_dtypes reads
them). Every candidate that is not compressed is returned with the reason, so
the report can say why: weights holding NaN or Inf, empty ones and ones with
values too near float32's limit for integer codes are left as they are.
"""

from __future__ import annotations

import math

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .ops import OpSpec, weight_slot
from .values import ML_FLOATS, is_float, stored_dtype, value_refusal


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
    chain: tuple[gs.Node, ...] = ()  # Transpose/Reshape/Cast nodes from the stored tensor to `uses`
    extra_param_bits: int = 0  # one step for the layer (core.channels.normalize adds per-channel ones)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node, _ in self.uses]


@dataclass(frozen=True)
class Skipped:
    """A weight left as it is, and why. `selected_out`: the selection left it in float
    (size, include or exclude), so it counts at 32 bits in the reported rates."""

    name: str
    op: str
    shape: tuple[int, ...]
    reason: str
    selected_out: bool = False


def _weight_constant(tensor) -> tuple[gs.Constant, gs.Node | None] | None:
    if isinstance(tensor, gs.Constant):
        return tensor, None
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        value = producer.attrs.get("value") if producer.op == "Constant" else None
        if isinstance(value, gs.Constant):
            return value, producer
    return None


# ops a weight may pass through on its way to a slot (PyTorch exports LSTM weights as Unsqueeze(W))
PASS_THROUGH = ("Transpose", "Reshape", "Cast", "Unsqueeze", "Squeeze")
_MAX_CHAIN = 8


@dataclass(frozen=True)
class _Source:
    """Where a slot's input is stored: `root` (the tensor holding `constant`) and the chain to the slot."""

    root: object
    constant: gs.Constant
    producer: gs.Node | None
    chain: tuple[gs.Node, ...]


def _source(tensor) -> _Source | None:
    """The constant behind a slot input, followed back through Transpose/Reshape/Cast nodes."""
    chain: list[gs.Node] = []
    while len(chain) <= _MAX_CHAIN:
        direct = _weight_constant(tensor)
        if direct is not None:
            return _Source(tensor, *direct, tuple(reversed(chain)))
        if not (isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1):
            return None
        node = tensor.inputs[0]
        if node.op not in PASS_THROUGH or not node.inputs or len(node.outputs) != 1:
            return None
        chain.append(node)
        tensor = node.inputs[0]
    return None


def all_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), outermost first."""
    return [graph, *graph.subgraphs(recursive=True)]


def fresh_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, … : the first not in `taken` (added to it)."""
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _candidates(graph: gs.Graph) -> tuple[dict[str, list], list[Skipped]]:
    """Stored tensor name → [source, [(node, input index, spec, owning graph)], conflict], and the
    constants that reach a weight slot as an input of a Loop/Scan body (not followed)."""
    found: dict[str, list] = {}
    passed_in: dict[str, Skipped] = {}
    feeders = _body_feeders(graph)
    for owner in all_graphs(graph):
        for node in owner.nodes:
            for index, tensor in enumerate(node.inputs):
                spec = weight_slot(node.op, index)
                source = _source(tensor) if spec else None
                if source is None and spec and id(tensor) in feeders:
                    loop, outer = feeders[id(tensor)]
                    fed = _source(outer)
                    if fed is not None:
                        passed_in.setdefault(fed.root.name, Skipped(
                            fed.root.name, node.op, tuple(fed.constant.shape),
                            f"reaches {_named(node)} as an input of a {loop.op} body "
                            "(weights passed into subgraphs as inputs are left in float)"))
                if (source is None and spec and not spec.embedding and id(tensor) not in feeders
                        and (tensor.dtype is None or is_float(tensor.dtype))):
                    through = _constant_ops(tensor)
                    if through:  # e.g. PyTorch's LSTM export reorders gates with Slice/Concat
                        passed_in.setdefault(tensor.name, Skipped(
                            tensor.name, node.op, tuple(tensor.shape or ()),
                            f"computed from constants through {'/'.join(through)} (not followed; left in float)"))
                if source is None:
                    continue
                entry = found.setdefault(source.root.name, [source, [], False])
                if [id(n) for n in entry[0].chain] != [id(n) for n in source.chain]:
                    entry[2] = True  # reaches its slots through different chains
                entry[1].append((node, index, spec, owner))
    return found, [skip for name, skip in passed_in.items() if name not in found]


def _constant_ops(tensor, depth: int = 12) -> list[str]:
    """The ops (in order met) by which `tensor` is computed from constants alone, or [] when it
    depends on a graph input or the walk goes deeper than `depth` nodes."""
    ops: list[str] = []
    stack = [tensor]
    while stack:
        current = stack.pop()
        if _weight_constant(current) is not None:
            continue
        if not (isinstance(current, gs.Variable) and len(current.inputs) == 1) or len(ops) >= depth:
            return []
        producer = current.inputs[0]
        if producer.op in ("If", "Loop", "Scan"):
            return []
        ops.append(producer.op)
        stack += [t for t in producer.inputs if t is not None and t.name]
    return list(dict.fromkeys(reversed(ops)))


def _named(node: gs.Node) -> str:
    return f"{node.op} {node.name!r}" if node.name else node.op


def _body_feeders(graph: gs.Graph) -> dict[int, tuple[gs.Node, object]]:
    """id(input tensor of a Loop/Scan body) → (the Loop/Scan node, the outer tensor it receives)."""
    feeders = {}
    for owner in all_graphs(graph):
        for node in owner.nodes:
            body = node.attrs.get("body") if node.op in ("Loop", "Scan") else None
            if not isinstance(body, gs.Graph) or (node.op == "Scan" and (graph.opset or 9) < 9):
                continue
            first = 2 if node.op == "Loop" else 0  # Loop bodies start with the iteration number and condition
            for inner, outer in zip(body.inputs[first:], node.inputs[first:]):
                feeders[id(inner)] = (node, outer)
    return feeders


def _owner(graph: gs.Graph, node: gs.Node) -> gs.Graph:
    return next(g for g in all_graphs(graph) if any(n is node for n in g.nodes))


def _home(graph: gs.Graph, source: _Source, slots: list) -> gs.Graph:
    """Where the weight's DequantizeLinear goes: beside its Constant node, beside the first
    node of its chain, in the one (sub)graph that uses it, or in the outermost graph,
    visible to all subgraphs."""
    if source.producer is not None:
        return _owner(graph, source.producer)
    if source.chain:
        return _owner(graph, source.chain[0])
    owners = {id(slot[3]): slot[3] for slot in slots}
    return next(iter(owners.values())) if len(owners) == 1 else graph


def _stray_consumer(tensor, allowed: set[tuple[int, int]]) -> str | None:
    for consumer in tensor.outputs:
        for index, inp in enumerate(consumer.inputs):
            if inp is tensor and (id(consumer), index) not in allowed:
                return f"also feeds {_named(consumer)}"
    return None


def _refusal(graph: gs.Graph, source: _Source, slots: list) -> str | None:
    tensors = [source.root, *(node.outputs[0] for node in source.chain)]
    allowed = [{(id(node), 0)} for node in source.chain] + [{(id(node), index) for node, index, *_ in slots}]
    for tensor, ok in zip(tensors, allowed):
        reason = _stray_consumer(tensor, ok)
        if reason is not None:
            return reason
    boundary = {id(t) for g in all_graphs(graph) for t in (*g.inputs, *g.outputs)}
    if any(id(t) in boundary for t in tensors):
        return "is a graph input or output"
    return _chain_refusal(source, slots) if source.chain else _plain_refusal(source.constant, slots)


def _plain_refusal(constant: gs.Constant, slots: list) -> str | None:
    dtype = stored_dtype(constant.dtype)
    if dtype != np.float32:
        return f"dtype {dtype} (only float32 weights are compressed)"
    return _rank_refusal(len(constant.shape), slots)


def _rank_refusal(rank: int, slots: list) -> str | None:
    for _, _, spec, _ in slots:
        if rank < spec.min_rank or (spec.max_rank is not None and rank > spec.max_rank):
            return f"rank {rank} is not a weight of {spec.op}"
    return None


_SOURCE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), *ML_FLOATS)


def _chain_refusal(source: _Source, slots: list) -> str | None:
    through = "/".join(dict.fromkeys(node.op for node in source.chain))
    dtype = stored_dtype(source.constant.dtype)
    if dtype not in _SOURCE_DTYPES:
        return f"dtype {dtype} behind {through} (only float weights are compressed)"
    shape = tuple(source.constant.shape)
    for node in source.chain:
        dtype, shape = _step(node, dtype, shape)
        if shape is None:
            return f"{node.op} {node.name!r} has no constant, valid shape or type (cannot follow it)"
    if dtype != np.float32:
        return f"reaches {slots[0][2].op} as {dtype} through {through} (only float32 weights are compressed)"
    return _rank_refusal(len(shape), slots)


def _step(node: gs.Node, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.dtype | None, tuple | None]:
    """Dtype and shape after one Transpose/Reshape/Cast (shape None: cannot tell)."""
    if node.op == "Cast":
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs.get("to", 0)))), shape
        except (KeyError, TypeError, ValueError):
            return None, None
    if node.op == "Transpose":
        perm = _perm(node, len(shape))
        return dtype, None if perm is None else tuple(shape[p] for p in perm)
    if node.op in ("Unsqueeze", "Squeeze"):
        return dtype, _squeezed(node, shape)
    return dtype, _reshaped(node, shape)


def _squeezed(node: gs.Node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Output shape of an Unsqueeze/Squeeze with constant axes (input since opset 13, else an
    attribute), None if they are not constant or invalid."""
    if len(node.inputs) > 1:
        found = _weight_constant(node.inputs[1])
        axes = None if found is None else np.asarray(found[0].values).reshape(-1)
    else:
        axes = node.attrs.get("axes")
    if axes is None and node.op == "Squeeze":
        return tuple(d for d in shape if d != 1)
    try:
        axes = [int(a) for a in axes]
    except (TypeError, ValueError):
        return None
    rank = len(shape) + (len(axes) if node.op == "Unsqueeze" else 0)
    axes = sorted(a % rank if -rank <= a < rank else -1 for a in axes)
    if -1 in axes or len(set(axes)) != len(axes):
        return None
    if node.op == "Squeeze":
        return None if any(shape[a] != 1 for a in axes) else tuple(d for i, d in enumerate(shape) if i not in axes)
    dims = iter(shape)
    return tuple(1 if i in axes else next(dims) for i in range(rank))


def _perm(node: gs.Node, rank: int) -> list[int] | None:
    perm = node.attrs.get("perm")
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    return perm if sorted(perm) == list(range(rank)) else None


def _reshaped(node: gs.Node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Reshape's output shape from its constant shape input (0 copies, -1 infers), None if invalid."""
    target = _weight_constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return None
    try:
        wanted = [int(d) for d in np.asarray(target[0].values).reshape(-1)]
    except (TypeError, ValueError):
        return None
    copy_zero = not node.attrs.get("allowzero", 0)
    out = [shape[i] if d == 0 and copy_zero and i < len(shape) else d for i, d in enumerate(wanted)]
    size, known = int(np.prod(shape)), int(np.prod([d for d in out if d != -1]))
    if out.count(-1) > 1 or any(d < -1 for d in out) or (0 in out and -1 in out):
        return None
    if -1 in out:
        if known == 0 or size % known:
            return None
        out[out.index(-1)] = size // known
    return tuple(out) if int(np.prod(out)) == size else None


def _source_axis(source: _Source, axis: int | None) -> int | None:
    """The stored tensor's axis that is the slot's axis `axis` (None: not traceable)."""
    shapes = [tuple(source.constant.shape)]
    dtype = stored_dtype(source.constant.dtype)
    for node in source.chain:
        dtype, shape = _step(node, dtype, shapes[-1])
        shapes.append(shape)
    for node, before, after in reversed(list(zip(source.chain, shapes, shapes[1:]))):
        if axis is None:
            return None
        if node.op == "Transpose":
            axis = _perm(node, len(before))[axis]
        else:  # Reshape, Unsqueeze, Squeeze
            axis = _reshape_axis(before, after, axis)
    return axis


def _reshape_axis(before: tuple[int, ...], after: tuple[int, ...], axis: int) -> int | None:
    """The input axis of a Reshape that carries its output axis `axis` unchanged: same size and
    same number of elements before it (then every element keeps its index along it)."""
    outer = int(np.prod(after[:axis]))
    for b in range(len(before)):
        if before[b] == after[axis] and int(np.prod(before[:b])) == outer:
            return b
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
    candidates, skipped = _candidates(graph)
    layers = []
    for name, (source, slots, conflict) in candidates.items():
        op, shape = slots[0][0].op, tuple(source.constant.shape)
        names = [name] + [slot[0].name for slot in slots]
        reason = ("reaches its consumers through different Transpose/Reshape/Cast nodes" if conflict
                  else _refusal(graph, source, slots))
        axis, groups = _axis(slots, _slot_rank(source, slots)) if reason is None else (None, 1)
        if reason is None and axis is None:
            reason = "its consumers disagree on the output-channel axis (left in float)"
        if reason is None and source.chain:
            axis = _source_axis(source, axis) if groups == 1 else None
            if axis is None:
                reason = (f"its output channels cannot be traced through "
                          f"{'/'.join(dict.fromkeys(n.op for n in source.chain))} (left in float)")
        if reason is None and not selection.embeddings and all(slot[2].embedding for slot in slots):
            reason = "embedding table (compressed when embeddings are selected)"
        selected_out = reason is None and _selected_out(selection, names, shape)
        reason = _selection_refusal(selection, names, shape) if selected_out else reason
        values = np.asarray(source.constant.values, dtype=np.float32) if reason is None else None
        reason = value_refusal(values) if reason is None else reason
        if reason is not None:
            skipped.append(Skipped(name, op, shape, reason, selected_out))
            continue
        layers.append(WeightLayer(name, op, values, axis, groups, source.constant,
                                  [(node, index) for node, index, *_ in slots], source.producer,
                                  _home(graph, source, slots), source.chain))
    return layers, skipped


def _selection_refusal(selection: Selection, names: list[str], shape: tuple[int, ...]) -> str | None:
    """Why `selection` leaves this weight in float, or None."""
    if math.prod(shape) < selection.min_params:
        return f"{math.prod(shape)} params, below the minimum of {selection.min_params}"
    if selection.include and not _matches(selection.include, names):
        return "not matched by the include patterns"
    if _matches(selection.exclude, names):
        return "excluded by the exclude patterns"
    return None


def _selected_out(selection: Selection, names: list[str], shape: tuple[int, ...]) -> bool:
    return _selection_refusal(selection, names, shape) is not None


def _slot_rank(source: _Source, slots: list) -> int:
    shape = tuple(source.constant.shape)
    dtype = stored_dtype(source.constant.dtype)
    for node in source.chain:
        dtype, shape = _step(node, dtype, shape)
    return len(shape)


def kept_names(layers: list[WeightLayer], selection: Selection, budget: bool = False) -> frozenset[str]:
    """Names of the layers `selection.keep` holds at 8 bits ("first", "last", or patterns;
    "auto" is "first,last" unless `budget`).

    "first" and "last" apply to models of three layers or more; those that "auto"
    chooses only to a layer holding at most KEEP_SHARE of the weights (keeping a
    dominant layer dense would leave little to compress), those given by name always.
    """
    words = set(selection.keep)
    guarded = {"first", "last"} - words if "auto" in words and not budget else set()
    total = sum(l.values.size for l in layers)
    ends = {"first": layers[:1], "last": layers[-1:]} if len(layers) >= 3 else {}
    keep = {l.name for word, chosen in ends.items() if word in words | guarded
            for l in chosen if word in words or l.values.size <= KEEP_SHARE * total}
    patterns = tuple(p for p in selection.keep if p not in ("first", "last", "auto"))
    keep |= {l.name for l in layers if _matches(patterns, [l.name, *l.node_names])}
    return frozenset(keep)
