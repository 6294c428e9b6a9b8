"""Running a model up to some of its intermediate tensors, with weights fed per run.

Data-aware compression captures the inputs of each compressible layer on the
calibration data, many times over (once per sequential stage), each time from a
model whose earlier layers hold other weights. So the model is turned once into
a *template* whose named weight and bias constants are graph inputs (a feed then
says their values), and each capture runs a *probe*: the template pruned to the
nodes the wanted tensors need, with those tensors as its outputs. Early stages
run only the front of the network; no weights are serialized per stage.

onnxruntime runs every node of a graph whatever outputs are asked for, so the
pruning is done here. Tensors that are graph inputs are read from the feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.normalize import constants_as_initializers
from .data import Dataset
from .sessions import session

MAX_BATCH = 256


@dataclass(frozen=True)
class Template:
    """`model` with the constants named in `values` turned into graph inputs (their values here)."""

    model: onnx.ModelProto
    values: dict[str, np.ndarray]
    data_inputs: tuple[str, ...]


def make_template(model: onnx.ModelProto, names: set[str]) -> Template:
    """A copy of `model` whose main-graph initializers and Constant nodes named in `names` are inputs.

    The copy leaves out the initializers that become inputs (copying them first would hold
    every weight of the model twice more)."""
    initializers = model.graph.initializer
    out = _copy_without_initializers(model)
    graph = out.graph
    init_names = {t.name for t in initializers}
    data_inputs = tuple(i.name for i in graph.input if i.name not in init_names)
    values: dict[str, np.ndarray] = {}
    keep = []
    for tensor in initializers:
        if tensor.name in names:
            values[tensor.name] = numpy_helper.to_array(tensor)
        else:
            keep.append(tensor)
    graph.initializer.extend(keep)
    moved = constants_as_initializers(out, names)  # appended last: taken back out as values
    for tensor in graph.initializer[len(graph.initializer) - len(moved):]:
        values[tensor.name] = numpy_helper.to_array(tensor)
    del graph.initializer[len(graph.initializer) - len(moved):]
    declared = {i.name for i in graph.input}
    for name, array in values.items():
        if name not in declared:
            dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
            graph.input.append(helper.make_tensor_value_info(name, dtype, list(array.shape)))
    return Template(out, values, data_inputs)


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose main graph has no initializers."""
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(out.graph, field, value)
    return out


def _copy_field(message, field, value) -> None:
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


class Probe:
    """The template pruned to compute `names`; `run` feeds a batch and the weights."""

    def __init__(self, template: Template, names: Sequence[str]):
        self.names = tuple(dict.fromkeys(names))
        inputs = {i.name for i in template.model.graph.input}
        self._computed = [n for n in self.names if n not in inputs]
        self._template = template
        self._session = session(_pruned(template, self._computed)) if self._computed else None
        self._inputs = ({i.name for i in self._session.get_inputs()} if self._session is not None else set())

    def run(self, batch: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The probed tensors for one batch of data inputs, with `weights` overriding the template's."""
        out = {}
        if self._session is not None:
            feed = {k: v for k, v in batch.items() if k in self._inputs}
            feed |= {k: weights.get(k, v) for k, v in self._template.values.items() if k in self._inputs}
            out = dict(zip(self._computed, self._session.run(self._computed, feed)))
        for name in self.names:
            if name not in out:
                out[name] = batch[name] if name in batch else weights.get(name, self._template.values.get(name))
        return out

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes, if any."""
        if self._session is None:
            return None
        fixed = {arg.shape[0] for arg in self._session.get_inputs() if arg.name in self._template.data_inputs
                 and isinstance(arg.shape, list) and arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0}
        return max(fixed) if fixed else None

    def batch_size(self, data: Dataset, max_bytes: int) -> int:
        """Samples per batch that keep the probed tensors within about `max_bytes` (one sample measured)."""
        if self.fixed_batch:
            return self.fixed_batch
        first = self.run({k: v[:1] for k, v in data.inputs.items()}, {})
        per_sample = sum(np.asarray(a).nbytes for a in first.values()) or 1
        return int(min(MAX_BATCH, max(1, max_bytes // per_sample)))


def batches(data: Dataset, samples: int, size: int, whole: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The first `samples` samples of `data` in batches of `size` (`whole`: whole batches only,
    at least one, as a model with a fixed batch size needs)."""
    n = min(samples, len(data))
    if whole:
        n = max(size, n - n % size)
    for lo in range(0, n, size):
        yield {k: v[lo:min(lo + size, n)] for k, v in data.inputs.items()}


def _pruned(template: Template, outputs: Sequence[str]) -> onnx.ModelProto:
    """The template's main graph cut down to the nodes `outputs` need, with `outputs` as its
    outputs; the data inputs all stay (they are always fed), weight inputs only where needed."""
    model = template.model
    graph = model.graph
    needed = set(outputs)
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_names(node))
    kept.reverse()
    types = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    outs = [_output_info(name, types) for name in outputs]
    data = set(template.data_inputs)
    inputs = [i for i in graph.input if i.name in data or i.name in needed]
    inits = [t for t in graph.initializer if t.name in needed]
    new_graph = helper.make_graph(kept, graph.name or "probe", inputs, outs, inits)
    new_graph.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in needed)
    probe = helper.make_model(new_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    return probe


def _output_info(name: str, types: dict) -> onnx.ValueInfoProto:
    known = types.get(name)
    elem = known.type.tensor_type.elem_type if known is not None and known.type.HasField("tensor_type") else 0
    return helper.make_tensor_value_info(name, elem or onnx.TensorProto.FLOAT, None)


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every name the nodes of `node`'s subgraphs read (outer-scope names among them)."""
    names = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def relative_errors(template: Template, names: Sequence[str], data: Dataset, samples: int,
                    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    max_bytes: int) -> dict[str, float]:
    """‖t_cand − t_ref‖² / ‖t_ref‖² of each named float tensor, the template run with the
    `reference` and the `candidate` weights on the same batches."""
    probe = Probe(template, names)
    sums = {n: [0.0, 0.0] for n in probe.names}
    for batch in batches(data, samples, probe.batch_size(data, max_bytes), whole=bool(probe.fixed_batch)):
        ref, cand = probe.run(batch, reference), probe.run(batch, candidate)
        for name in probe.names:
            r, c = np.asarray(ref[name]), np.asarray(cand[name])
            if r.dtype.kind == "f" and r.shape == c.shape:
                r, c = r.astype(np.float64), c.astype(np.float64)
                sums[name][0] += float(((c - r) ** 2).sum())
                sums[name][1] += float((r * r).sum())
    return {n: e / s if s > 0 else 0.0 for n, (e, s) in sums.items() if s > 0 or e == 0}


def stages(model: onnx.ModelProto, layers: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """Consecutive runs of `layers` (name, the tensors it reads; in topological order) in which
    no layer's tensors depend on another layer of the same run (a layer's weight is the tensor
    named after it)."""
    bit = {name: 1 << i for i, (name, _) in enumerate(layers)}
    depends: dict[str, int] = dict(bit)
    for node in model.graph.node:
        d = 0
        for name in [*node.input, *_subgraph_names(node)]:
            d |= depends.get(name, 0)
        for name in node.output:
            depends[name] = d
    out: list[list[str]] = []
    current = 0
    for name, tensors in layers:
        upstream = 0
        for t in tensors:
            upstream |= depends.get(t, 0)
        upstream &= ~bit[name]
        if not out or upstream & current:
            out.append([])
            current = 0
        out[-1].append(name)
        current |= bit[name]
    return out


def perturbation_gains(template: Template, layers: Sequence[tuple[str, str]], data: Dataset, samples: int,
                       noise: float = 0.1, max_bytes: int = 1 << 28) -> dict[str, float]:
    """For each (weight, its layer's output tensor): the model outputs' relative error over the
    layer output's, with Gaussian noise of `noise`·rms of each output channel on the weight
    (the template's other weights as they are). Seeded per layer: the same every run."""
    finals = [o.name for o in template.model.graph.output]
    probe = Probe(template, [*finals, *(t for _, t in layers)])
    size = probe.batch_size(data, max_bytes)
    feeds = list(batches(data, samples, size, whole=bool(probe.fixed_batch)))
    reference = [probe.run(batch, {}) for batch in feeds]
    gains = {}
    for i, (name, tensor) in enumerate(layers):
        w = template.values[name]
        rows = w.reshape(w.shape[0], -1).astype(np.float64) if w.ndim > 1 else w.reshape(1, -1).astype(np.float64)
        rms = np.sqrt((rows ** 2).mean(axis=1, keepdims=True))
        rng = np.random.default_rng(i)
        noisy = (rows + noise * rms * rng.standard_normal(rows.shape)).reshape(w.shape).astype(w.dtype)
        sums = np.zeros(4)
        for batch, ref in zip(feeds, reference):
            out = probe.run(batch, {name: noisy})
            for key, slot in [(tensor, 0), *((f, 2) for f in finals)]:
                r, c = np.asarray(ref[key], np.float64), np.asarray(out[key], np.float64)
                if r.dtype.kind == "f" and r.shape == c.shape:
                    sums[slot] += float(((c - r) ** 2).sum())
                    sums[slot + 1] += float((r * r).sum())
        layer_error = sums[0] / sums[1] if sums[1] > 0 else 0.0
        model_error = sums[2] / sums[3] if sums[3] > 0 else 0.0
        gains[name] = model_error / layer_error if layer_error > 0 else 1.0
    return gains
