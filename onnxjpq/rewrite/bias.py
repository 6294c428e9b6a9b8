"""A layer's per-output-channel bias: where it lives, and writing a corrected one (METHODS.md §7e).

Bias correction changes the bias of the op that reads a compressed weight. Where
it lives depends on the op:

- Conv, and Gemm with the weight as B: the op's bias input (the registry's
  `bias_input`). Gemm computes alpha·A·B + beta·C, so an output shift Δ is a
  change of alpha·Δ/beta in C; C must hold one value per output channel ([N] or
  [1, N]). A missing bias input gets a new constant.
- MatMul with the weight as its second input: a following Add of a constant with
  one value per output channel (the usual `x @ W + b` export); with none, a new
  Add of a new constant is inserted after the MatMul (its output keeps the name,
  so every consumer is untouched).

A bias constant shared with other nodes is never written: the op gets a private
copy. Other layers (a weight on the left of MatMul/Gemm, recurrent ops, shared
weights) get no correction; `bias_site` says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.layers import WeightLayer, all_graphs, fresh_name
from ..graph.ops import weight_slot


@dataclass(frozen=True)
class BiasSite:
    """Where a layer's bias is or goes: input `slot` of `node` (`present`: it is there already).

    kind: "input" (the op's bias input), "add" (a following Add), "new-add" (an Add to insert
    after `node`). scale: how an output shift Δ changes the stored bias (ΔC = scale·Δ).
    channels: output channels (the bias length).
    """

    node: gs.Node
    slot: int
    present: bool
    kind: str
    scale: float
    channels: int


def bias_site(graph: gs.Graph, layer: WeightLayer) -> BiasSite | str:
    """Where `layer`'s bias is or would go, or why it cannot be corrected."""
    if len(layer.uses) != 1:
        return f"the weight feeds {len(layer.uses)} nodes (each has its own bias)"
    node, index = layer.uses[0]
    spec = weight_slot(node.op, index)
    if spec is not None and spec.bias_input is not None:
        shape = node.inputs[index].shape or (None if layer.chain else layer.values.shape)
        if shape is None:
            return "the shape its node reads is unknown"
        return _input_site(node, spec.bias_input, tuple(shape))
    shape = node.inputs[index].shape or (None if layer.chain else layer.values.shape)
    if node.op == "MatMul" and index == 1 and shape is not None and len(shape) == 2:
        return _add_site(graph, node, int(shape[-1]))
    return f"{node.op} has no per-output-channel bias for its input {index}"


def _input_site(node: gs.Node, slot: int, shape: tuple) -> BiasSite | str:
    if node.op == "Gemm":
        channels = shape[0 if node.attrs.get("transB", 0) else 1]
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        if beta == 0.0:
            return "Gemm has beta = 0 (its C input is ignored)"
        scale = alpha / beta
    else:
        channels, scale = shape[0], 1.0
    if len(node.inputs) <= slot or _absent(node.inputs[slot]):
        return BiasSite(node, slot, False, "input", scale, int(channels))
    values = _constant_values(node.inputs[slot])
    if values is None:
        return "its bias is computed, not a constant"
    if values.dtype != np.float32 or values.size != channels or values.shape[-1] != channels:
        return f"its bias of shape {list(values.shape)} is not one float32 value per output channel"
    return BiasSite(node, slot, True, "input", scale, int(channels))


def _add_site(graph: gs.Graph, node: gs.Node, channels: int) -> BiasSite:
    out = node.outputs[0]
    consumers = list(out.outputs)
    outputs = {id(t) for g in all_graphs(graph) for t in g.outputs}
    if len(consumers) == 1 and consumers[0].op == "Add" and id(out) not in outputs:
        add = consumers[0]
        other = 1 if add.inputs[0] is out else 0
        values = _constant_values(add.inputs[other])
        if (values is not None and values.dtype == np.float32 and values.size == channels
                and values.shape[-1] == channels):
            return BiasSite(add, other, True, "add", 1.0, channels)
    return BiasSite(node, 1, False, "new-add", 1.0, channels)


def current_bias(site: BiasSite) -> np.ndarray | None:
    """The bias now stored, as float64 [channels] (None: there is none)."""
    if not site.present:
        return None
    return _constant_values(site.node.inputs[site.slot]).astype(np.float64).reshape(-1)


def ensure_bias(graph: gs.Graph, site: BiasSite) -> BiasSite:
    """The site with a bias tensor read by its node alone (a zero one where there was none);
    its values can then be written without touching any other node."""
    if site.present and _private(site.node.inputs[site.slot], site.node):
        return site
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    values = (np.array(_constant_values(site.node.inputs[site.slot]), np.float32) if site.present
              else np.zeros(site.channels, np.float32))
    fresh = gs.Constant(fresh_name(f"{_base(site.node)}_bias", taken), values)
    if site.kind == "new-add":
        return _insert_add(graph, site.node, fresh, taken)
    node = site.node
    while len(node.inputs) < site.slot:
        node.inputs.append(gs.Variable.empty())
    if len(node.inputs) == site.slot:
        node.inputs.append(fresh)
    else:
        node.inputs[site.slot] = fresh
    return BiasSite(node, site.slot, True, site.kind, site.scale, site.channels)


def bias_tensor_name(site: BiasSite) -> str:
    """The name of the tensor holding a present bias."""
    return site.node.inputs[site.slot].name


def write_bias(graph: gs.Graph, layer: WeightLayer, bias: np.ndarray) -> None:
    """Store `bias` ([channels]) as `layer`'s bias, in the shape the old one had."""
    site = bias_site(graph, layer)
    if isinstance(site, str):
        raise ValueError(f"{layer.name}: no bias to write ({site})")
    site = ensure_bias(graph, site)
    constant = _constant_of(site.node.inputs[site.slot])
    constant.values = np.asarray(bias, np.float32).reshape(np.shape(constant.values))


def _insert_add(graph: gs.Graph, node: gs.Node, bias: gs.Constant, taken: set[str]) -> BiasSite:
    """MatMul → Add(bias): the MatMul writes a new tensor, the Add the old one."""
    out = node.outputs[0]
    owner = next(g for g in all_graphs(graph) if any(n is node for n in g.nodes))
    unbiased = gs.Variable(fresh_name(f"{out.name}_unbiased", taken), dtype=out.dtype, shape=out.shape)
    node.outputs[0] = unbiased
    add = gs.Node("Add", name=fresh_name(f"{_base(node)}_bias_Add", taken), inputs=[unbiased, bias], outputs=[out])
    owner.nodes.insert(owner.nodes.index(node) + 1, add)
    return BiasSite(add, 1, True, "add", 1.0, int(bias.values.size))


def _private(tensor, node: gs.Node) -> bool:
    """Read by `node` alone, once (and, for a Constant node's output, produced for it alone)."""
    uses = [(n, i) for n in tensor.outputs for i, t in enumerate(n.inputs) if t is tensor]
    return len(uses) == 1 and uses[0][0] is node


def _constant_of(tensor) -> gs.Constant:
    return tensor if isinstance(tensor, gs.Constant) else tensor.inputs[0].attrs["value"]


def _constant_values(tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return np.asarray(value.values) if isinstance(value, gs.Constant) else None
    return None


def _absent(tensor) -> bool:
    return tensor is None or (isinstance(tensor, gs.Variable) and not tensor.name)


def _base(node: gs.Node) -> str:
    return node.name or node.outputs[0].name
