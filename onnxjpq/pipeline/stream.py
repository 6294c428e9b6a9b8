"""Compress a model whose weights are external data, one layer in memory at a time.

`compress_file` takes this path when the input keeps tensors in external data
and the settings allow it (`compress.streamable`: OPQ with Laplace ratios, qdq
or float output, no calibration data). The output is the in-memory path's,
value for value (tests/test_large.py); only the memory differs:

- the model is read without its external data; each external tensor becomes a
  `MappedValues` (graphsurgeon's `LazyValues` on the same TensorProto, so
  tensors left alone export as they are). Finding the layers reads nothing:
  large float tensors show a zero-strided placeholder. A pass maps one
  layer's bytes read-only and releases the pages after it (madvise
  DONTNEED), so the resident set holds about one layer;
- OPQ is solved by `opq.solve_sources`, the in-memory solver's own code, on
  `_Source`s that read one layer per call: `scan` finds channel ranges and
  Laplace scales, then the solver's pass gives masks, kept maxima and kept
  counts. The step calibration also counts, in layers whose small kept weights
  may round to 0, the weights at or above half a step, read from the file once
  per distinct step;
- each rewritten layer's codes go straight to the output's `.data` file
  (`io.ExternalWriter`) and the graph keeps a reference to them; tensors the
  rewrite leaves alone are copied across in chunks.

Peak memory is the imports (about 130 MB) plus the temporaries of the largest
layer, whatever the model's size: about 14 bytes per weight (its mapped values,
mask, int32 codes, and `apply_qdq`'s |codes| and stored codes); the float64
rounding, error and Laplace fit run in blocks of `quant.BLOCK` weights.
tools/bench_large.py measures it. The onnxruntime check of the output runs
without graph optimizations (see `_check`).
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import asdict, replace
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import external_data_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..core.channels import channel_ranges, rescale
from .compress import (export_graph, float_params, granularity_of, opq_for, solve_budget, solve_notes, summarize,
                       upgrade_for)
from ..errors import ModelError, OptionError
from ..graph.io import ExternalWriter, external_span
from ..graph.layers import Selection, Skipped, WeightLayer, all_graphs, find_layers, kept_names
from ..graph.values import value_refusal
from ..graph.ops import weight_ops_text
from ..graph.macs import layer_macs, tensor_shapes
from ..methods.annc import AnncConfig
from ..methods.opq import (KeptChannels, OpqConfig, count_at_least, kept_channels, magnitude_mask,
                          solve_sources)
from ..core.plan import CompressionPlan, LayerPlan
from ..core.quant import blockable, blockwise, quantize_codes
from .report import layer_row, report_dict
from ..rewrite import layer_codes
from ..rewrite.dense import apply_float
from ..rewrite.qdq import apply_qdq, pack_int4
from ..core.stats import laplace_fit, laplace_scale

__all__ = ["MappedValues", "compress_streaming", "map_external", "plan_streaming", "scan"]


_PLACEHOLDER_BYTES = 1 << 20  # larger float tensors are read only when a pass needs them


class MappedValues(LazyValues):
    """An external tensor's values, read from its data file.

    `load` (what graphsurgeon and `find_layers` see) reads small or non-float
    tensors (Reshape shapes and the like) for real, and gives large float
    tensors a zero-strided placeholder of the right shape and dtype, so
    finding the layers reads nothing; `read` maps the data (read-only) and
    `release` drops the pages read so far from this process (they stay in the
    page cache).
    """

    def __init__(self, tensor: onnx.TensorProto, base: Path):
        super().__init__(tensor)
        self.file, self.offset, self.length = external_span(tensor, base)
        self.np_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        self.placeholder = self.np_dtype.kind == "f" and self.length >= _PLACEHOLDER_BYTES
        self._map: np.memmap | None = None

    def load(self) -> np.ndarray:
        shape = tuple(self.tensor.dims)
        if self.placeholder:
            return np.broadcast_to(np.zeros((), self.np_dtype), shape)
        return np.array(self.read())

    def read(self) -> np.ndarray:
        if self.length == 0:
            return np.zeros(tuple(self.tensor.dims), self.np_dtype)
        if self._map is None:
            self._map = np.memmap(self.file, dtype=self.np_dtype, mode="r", offset=self.offset,
                                  shape=tuple(self.tensor.dims))
        return self._map

    def release(self) -> None:
        if self._map is not None:
            self._map._mmap.madvise(mmap.MADV_DONTNEED)


def map_external(graph: gs.Graph, base: Path) -> dict[int, tuple[gs.Constant, MappedValues]]:
    """Make every external constant of `graph` a `MappedValues`; return them by id(constant)."""
    mapped = {}
    constants = [t for g in all_graphs(graph) for t in g.tensors().values() if isinstance(t, gs.Constant)]
    constants += [v for g in all_graphs(graph) for n in g.nodes for v in n.attrs.values()
                  if isinstance(v, gs.Constant)]
    for constant in constants:
        lazy = constant._values
        if (type(lazy) is LazyValues and isinstance(lazy.tensor, onnx.TensorProto)
                and external_data_helper.uses_external_data(lazy.tensor)):
            constant._values = MappedValues(lazy.tensor, base)
            mapped[id(constant)] = (constant, constant._values)
    return mapped


def _divide(w: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """`channels.normalize`'s division (float64, then float32), elementwise."""
    return (w / ranges).astype(np.float32)


class _Source:
    """One layer as the solver sees it (an `opq.LayerSource`): values read on demand,
    divided by the channel ranges when the layer gets per-channel steps
    (`onnxjpq.core.channels.normalize`); every read releases its pages. `scan` sets
    `ranges` and `scale`; `kept` records the prune count, and each channel's kept
    count and kept max |w| in real units (for the layer's largest code)."""

    def __init__(self, layer: WeightLayer, mapped: MappedValues | None):
        self.layer, self.mapped = layer, mapped if mapped is not None and mapped.placeholder else None
        self.name, self.axis, self.groups = layer.name, layer.axis, layer.groups
        self.size = layer.values.size
        self.ranges: np.ndarray | None = None
        self.scale, self.pruned = 0.0, 0
        self.kept_max = self.kept_count = np.zeros(0)
        self._at_least: dict[float, np.ndarray] = {}

    def raw(self) -> np.ndarray:
        """The stored values as float32 (what `find_layers` gives in memory)."""
        if self.mapped is None:
            return self.layer.values
        return np.asarray(self.mapped.read(), dtype=np.float32)

    def values(self) -> np.ndarray:
        w = self.raw()
        if self.ranges is None:
            return w
        view = [1] * w.ndim
        view[self.axis % w.ndim] = -1
        ranges = self.ranges.reshape(view)
        return blockwise(_divide, np.float32, w, ranges) if blockable(w) else _divide(w, ranges)

    def release(self) -> None:
        if self.mapped is not None:
            self.mapped.release()

    def laplace_scale(self) -> float:
        return self.scale  # measured by `scan`, in the pass that finds the ranges

    def kept(self, n_pruned: int, threshold: float) -> KeptChannels:
        self.pruned = n_pruned
        w = self.values()
        mask = magnitude_mask(w, n_pruned)
        kept = kept_channels(w, mask, self.axis, self.groups, threshold)
        self.kept_count, self.kept_max = kept.count, kept.alpha
        if self.ranges is not None:  # in real units (per-channel layers have groups 1)
            self.kept_max = kept_channels(self.raw(), mask, self.axis).alpha
        self.release()
        return replace(kept, mask=None, at_least=self._count_at_least)

    def _count_at_least(self, t: np.float64) -> np.ndarray:
        """`KeptChannels.at_least` read from the file, once per distinct t."""
        if float(t) not in self._at_least:
            w = self.values()
            self._at_least[float(t)] = count_at_least(w, magnitude_mask(w, self.pruned), self.axis, self.groups, t)
            self.release()
        return self._at_least[float(t)]


def scan(sources: list[_Source], granularity: str) -> dict[str, str]:
    """Pass 1: channel ranges and the Laplace scale mean|w| of each layer; returns the
    layers holding NaN or Inf (name → reason), which stay as they are."""
    bad = {}
    for s in sources:
        w = s.raw()
        reason = value_refusal(w)  # NaN or Inf, or too near float32's limit
        if reason is not None:
            bad[s.name] = reason
        else:
            s.ranges = channel_ranges(w, s.axis, s.groups, granularity)
            w = s.values()
            s.scale = laplace_scale(w)
        del w
        s.release()
    return bad


def _max_code(plan: LayerPlan, kept_max: np.ndarray, counts: np.ndarray) -> int:
    """The layer's largest |code|, as `quantize_codes` would give it, from its channels'
    kept maxima (rounding is monotone in |w|)."""
    steps = plan.channel_steps if plan.channel_steps is not None else np.full(kept_max.shape, plan.step)
    steps = np.asarray(steps, np.float64)
    q = np.floor(kept_max.astype(np.float32) / np.where(steps > 0, steps, 1.0) + 0.5)
    if plan.keep_survivors:
        q = np.maximum(q, 1.0)
    if plan.max_code is not None:
        q = np.minimum(q, plan.max_code)
    q = np.where((counts > 0) & (steps > 0), q, 0)
    return int(q.max(initial=0))


def _find(model: onnx.ModelProto, base: Path, selection: Selection, bad: dict[str, str]):
    """`compress._find` with the external weights left on disk; layers named in `bad`
    are skipped with their reason."""
    graph = gs.import_onnx(model)
    mapped = map_external(graph, base)
    found, skipped = find_layers(graph, selection)
    for constant, values in mapped.values():  # undo the placeholders graphsurgeon cached
        constant._values = values
    layers = [l for l in found if l.name not in bad]
    skipped += [Skipped(l.name, l.op, tuple(l.values.shape), bad[l.name]) for l in found if l.name in bad]
    if not layers:
        raise ModelError(f"no compressible layer ({weight_ops_text()} with a constant float weight)")
    return graph, layers, skipped, [_Source(l, mapped.get(id(l.constant), (None, None))[1]) for l in layers]


def _carry(sources: list[_Source], earlier: list[_Source]) -> None:
    """Give a fresh find's layers what the passes learnt of them."""
    known = {s.name: s for s in earlier}
    for s in sources:
        s.ranges, s.scale, s.pruned = known[s.name].ranges, known[s.name].scale, known[s.name].pruned


def _spill(writer: ExternalWriter, constant: gs.Constant, int4: bool = False) -> None:
    """Move `constant`'s values to the data file; the graph keeps a reference."""
    values = np.ascontiguousarray(constant.values)
    data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    data = values.view(np.uint8) if values.dtype.kind == "V" else values  # ml_dtypes' floats have no buffer
    if int4:  # stored packed; typed int8 until `_retype_int4` runs on the export
        data = onnx.numpy_helper.from_array(values.astype(ml_dtypes.int4)).raw_data
    constant.values = LazyValues(writer.tensor(constant.name, values.shape, data_type, data))


def _retype_int4(model: onnx.ModelProto, names: set[str]) -> None:
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.name in names:
            tensor.data_type = onnx.TensorProto.INT4


def _rewrite(graph, layers, sources, plan, output, int4, writer, shapes):
    """Apply `plan` one layer at a time, spilling each new weight; return the report rows
    and the int4 zero points still to pack."""
    plans, by_name = plan.by_name(), {s.name: s for s in sources}
    rows, zero_points, packed = [], [], set()
    for layer in layers:
        source, placeholder = by_name[layer.name], layer.values
        layer.values = source.raw()
        p = replace(plans[layer.name], mask=plans[layer.name].mask_for(source.values()))
        if output.format == "float":
            container = apply_float(layer, p)
            codes = layer_codes(layer, p)
            _spill(writer, layer.constant)
        else:
            stored = apply_qdq(graph, layer, p, allow_int4=int4)
            container, codes = stored.container, stored.quantized.values
            if container == "int4":
                zero_points.append(stored.zero_point.name)
                packed.add(stored.quantized.name)
            _spill(writer, stored.quantized, int4=container == "int4")
        rows.append(layer_row(layer, p, codes, container, laplace_fit(layer.values), layer_macs(layer, shapes)))
        del p, codes
        layer.values = placeholder
        source.release()
    return rows, zero_points, packed


def plan_streaming(model: onnx.ModelProto, base: Path, config: OpqConfig | AnncConfig, selection: Selection,
                   output) -> tuple[CompressionPlan, list[int], dict[str, str], list[_Source]]:
    """`plan_model` for a model whose weights stay on disk: the plan (prune counts, no
    masks), each layer's largest code, the layers skipped for NaN/Inf (name → reason) and
    the layers' sources."""
    _, layers, skipped, sources = _find(model, base, selection, {})
    bad = scan(sources, granularity_of(config))
    if bad:
        earlier = sources
        _, layers, skipped, sources = _find(model, base, selection, bad)
        _carry(sources, earlier)
    ranges = {s.name: s.ranges for s in sources if s.ranges is not None}
    if isinstance(config, AnncConfig):
        views = [_SolverView(s) for s in sources]
        plan = solve_budget(views, layers, config, kept_names(layers, selection, budget=True),
                            float_params(skipped), model, masks=False)
        plan = rescale(plan, layers, ranges)
        return plan, [_largest_code(p, s) for p, s in zip(plan.layers, sources)], bad, sources
    plan = solve_sources(sources, opq_for(config, output), kept_names(layers, selection))  # masks None: see `_rewrite`
    plan = rescale(plan, layers, ranges)
    return plan, [_max_code(p, s.kept_max, s.kept_count) for p, s in zip(plan.layers, sources)], bad, sources


class _SolverView:
    """A `WeightArray` over a `_Source` for the budget solver: each read of `values` copies
    the layer (normalised by its channel ranges) out of the file and releases its pages, so
    the resident set holds one layer however often the solver reads."""

    def __init__(self, source: _Source):
        self.source, self.name, self.axis, self.groups = source, source.name, source.axis, source.groups
        ranges = source.ranges
        self.extra_param_bits = 0 if ranges is None else 32 * (ranges.size - 1)

    @property
    def values(self) -> np.ndarray:
        values = np.array(self.source.values())  # a copy: the mapped pages go back at once
        self.source.release()
        return values


def _largest_code(plan: LayerPlan, source: _Source) -> int:
    """The layer's largest |code| under `plan`, as the rewrite will store it."""
    mask, shape = plan.mask_for(source.values()), tuple(source.layer.values.shape)
    codes = quantize_codes(source.raw(), mask, plan.steps_for(shape), plan.keep_survivors, plan.max_code)
    source.release()
    return int(np.abs(codes).max(initial=0))


def compress_streaming(model: onnx.ModelProto, src, dst, config: OpqConfig, selection: Selection,
                       output, progress=None) -> tuple[dict, int]:
    """Compress `model` (loaded by `io.load_model_lazy(src)`) into `dst`; return the
    report and the bytes written (model + data file)."""
    base, dst = Path(src).parent.resolve(), Path(dst)
    _refuse_overwriting_input(model, base, dst)
    plan, max_codes, bad, sources = plan_streaming(model, base, config, selection, output)
    notes = solve_notes(plan, config)
    settings = {"method": plan.method, "config": asdict(config), "notes": notes}
    with contextlib.chdir(base):  # onnx.checker resolves the external data of a proto from the cwd
        model, int4 = upgrade_for(model, plan, max_codes, output, notes)
    graph, layers, skipped, new_sources = _find(model, base, selection, bad)
    _carry(new_sources, sources)
    with ExternalWriter(dst) as writer:
        rows, zero_points, packed = _rewrite(graph, progress(layers) if progress else layers, new_sources,
                                             plan, output, int4, writer, tensor_shapes(model))
        total, metadata = summarize(rows, skipped, plan, selection, output, settings)
        out = export_graph(graph, model, int4, metadata)
        _retype_int4(out, packed)
        pack_int4(out, zero_points)
        _check(writer.finish(out, base), output.check_runtime)
        bytes_out = writer.commit()
    return report_dict(rows, total, skipped, settings), bytes_out


def _refuse_overwriting_input(model: onnx.ModelProto, base: Path, dst: Path) -> None:
    data = (dst.parent / (dst.name + ".data")).resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor) and external_span(tensor, base)[0] == data:
            raise OptionError(f"output data file {data.name} would overwrite the input's external data; "
                              "choose another output name")


def _check(path: Path, runtime: bool) -> None:
    """The output must pass onnx.checker (from its path, so external data is allowed) and,
    under 2 GB, load in onnxruntime: anything else is our bug. The session is built
    without graph optimizations: constant folding would turn every DequantizeLinear
    back into a float weight, the full-size copy this path avoids (2.3x the output)."""
    onnx.checker.check_model(str(path))
    data = path.parent / (path.name + ".data")
    if runtime and path.stat().st_size + data.stat().st_size < 2**31 - 1:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
