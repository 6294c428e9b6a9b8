"""The compression pipeline: load → find weights → solve → rewrite → check → save."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .._version import __version__
from ..core.channels import normalize, rescale, resolved_granularity
from ..errors import ModelError, OptionError, first_line
from ..graph.io import proto_graphs
from ..graph.layers import Selection, WeightLayer, find_layers, kept_names
from ..graph.ops import weight_ops_text
from ..graph.macs import layer_macs, tensor_shapes
from ..methods.annc import AnncConfig, solve_annc
from ..methods.opq import OpqConfig, solve_opq
from ..graph.opset import INT4_MIN_IR, INT4_MIN_OPSET, QDQ_MIN_OPSET, default_opset, upgrade
from ..core.plan import CompressionPlan
from ..core.quant import CONTAINER_MAX
from .report import layer_row, report_dict, totals
from ..rewrite import FORMATS, layer_codes
from ..rewrite.bias import write_bias
from ..rewrite.dense import apply_float
from ..rewrite.packed import PACKED_MIN_OPSET, apply_packed
from ..rewrite.qdq import apply_qdq, pack_int4
from ..rewrite.sparse import to_sparse
from ..core.stats import laplace_fit


@dataclass(frozen=True)
class OutputConfig:
    """How the compressed weights are stored: format qdq|float|sparse, int4 allowed or not,
    and whether the output is checked in onnxruntime."""

    format: str = "qdq"
    int4: bool = True
    check_runtime: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise OptionError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")


def find_model_layers(model: onnx.ModelProto, selection: Selection = Selection()):
    """The compressible layers of a loaded model, and the skipped weights with reasons."""
    _, layers, skipped = find_graph_layers(model, selection)
    return layers, skipped


def find_graph_layers(model: onnx.ModelProto, selection: Selection):
    """The imported graph of a loaded model, its compressible layers and the skipped weights
    (the one-line error when nothing is compressible)."""
    graph = gs.import_onnx(model)
    layers, skipped = find_layers(graph, selection)
    if not layers:
        if _packed_by_onnxjpq(model):
            raise ModelError("the model's weights are packed (compress --format packed): "
                             "run `onnxjpq unpack` on it first")
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
        raise ModelError(f"no compressible layer ({weight_ops_text()} with a constant float weight)"
                         + (f"; skipped {reasons}" if reasons else ""))
    return graph, layers, skipped


def _packed_by_onnxjpq(model: onnx.ModelProto) -> bool:
    settings = next((p.value for p in model.metadata_props if p.key == "onnxjpq.settings"), "")
    return '"format": "packed"' in settings


def _prepare_opset(model: onnx.ModelProto, plan: CompressionPlan, layers: list[WeightLayer],
                   output: OutputConfig, notes: list[str]) -> tuple[onnx.ModelProto, bool]:
    """Upgrade the opset the rewrite needs; return the model and whether int4 is usable."""
    if output.format == "float":
        return model, False
    plans = plan.by_name()
    max_codes = [int(np.abs(layer_codes(l, plans[l.name])).max(initial=0)) for l in layers]
    return upgrade_for(model, plan, max_codes, output, notes)


def upgrade_for(model: onnx.ModelProto, plan: CompressionPlan, max_codes: list[int],
                output: OutputConfig, notes: list[str]) -> tuple[onnx.ModelProto, bool]:
    """`_prepare_opset` given each layer's largest code (the streaming path knows them
    from its statistics)."""
    if output.format == "float":
        return model, False
    if output.format == "packed":
        return _packed_opset(model, notes), False
    wants_int4 = output.int4 and output.format == "qdq" and min(max_codes) <= CONTAINER_MAX["int4"]
    opset = default_opset(model)
    if wants_int4 and opset < INT4_MIN_OPSET:
        upgraded = upgrade(model, INT4_MIN_OPSET)
        if upgraded is not None:
            notes.append(f"opset upgraded from {opset} to {INT4_MIN_OPSET} for int4 storage")
            return upgraded, True
        notes.append(f"opset {opset} could not be upgraded to {INT4_MIN_OPSET}: int4 layers stored as int8")
        wants_int4 = False
    needed = 13 if any(p.channel_steps is not None for p in plan.layers) else QDQ_MIN_OPSET
    if default_opset(model) < needed:  # per-axis DequantizeLinear needs opset 13
        upgraded = upgrade(model, 13)
        if upgraded is None:
            raise ModelError(f"opset {opset} is too old for DequantizeLinear and cannot be upgraded; "
                             "use --format float")
        notes.append(f"opset upgraded from {opset} to 13 for DequantizeLinear")
        return upgraded, wants_int4
    return model, wants_int4


def _packed_opset(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """The packed format's decoder needs BitShift/BitwiseAnd of opset 18."""
    opset = default_opset(model)
    if opset >= PACKED_MIN_OPSET:
        return model
    upgraded = upgrade(model, PACKED_MIN_OPSET)
    if upgraded is None:
        raise ModelError(f"opset {opset} cannot be upgraded to {PACKED_MIN_OPSET}, which the packed format "
                         "needs; use the qdq or float format")
    notes.append(f"opset upgraded from {opset} to {PACKED_MIN_OPSET} for the packed format")
    return upgraded


def _hoist_outer_initializers(out: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Put back in the main graph the initializers the original kept there.

    onnx-graphsurgeon copies an outer-scope constant into every subgraph that
    reads it, which would store it once per If/Loop branch.
    """
    outer = {t.name for t in original.graph.initializer}
    present = {t.name for t in out.graph.initializer}
    for sub in list(proto_graphs(out.graph))[1:]:
        keep = []
        for tensor in sub.initializer:
            if tensor.name not in outer:
                keep.append(tensor)
            elif tensor.name not in present:
                out.graph.initializer.append(tensor)
                present.add(tensor.name)
        del sub.initializer[:]
        sub.initializer.extend(keep)


def export_graph(graph: gs.Graph, original: onnx.ModelProto, int4: bool, metadata: dict) -> onnx.ModelProto:
    out = gs.export_onnx(graph)
    _hoist_outer_initializers(out, original)
    out.ir_version = max(original.ir_version, INT4_MIN_IR if int4 else 0)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(original, field))
    del out.metadata_props[:]
    props = {p.key: p.value for p in original.metadata_props} | metadata
    onnx.helper.set_model_props(out, dict(sorted(props.items())))
    return out


def _solve(model: onnx.ModelProto, layers, config: OpqConfig | AnncConfig, fixed: frozenset[str],
           float_params: int, output: OutputConfig, sensitivity: dict | None) -> CompressionPlan:
    solver_layers, ranges = normalize(layers, granularity_of(config))
    if isinstance(config, AnncConfig):
        plan = solve_budget(solver_layers, layers, config, fixed, float_params, model, sensitivity)
    else:
        plan = solve_opq(solver_layers, opq_for(config, output), fixed)
    return rescale(plan, layers, ranges)


def opq_for(config: OpqConfig, output: OutputConfig) -> OpqConfig:
    """OPQ fits the largest layers' codes into int4 unless --no-int4, in every format, so that the
    formats hold the same values and differ only in how they store them."""
    return config if output.int4 else replace(config, fit_int4=False)


def granularity_of(config: OpqConfig | AnncConfig) -> str:
    """The granularity the solve uses: a fixed 8-bit plan's "auto" is per channel (core.channels)."""
    if isinstance(config, OpqConfig):
        return resolved_granularity(config.granularity, config.bits, config.prune)
    return config.granularity


def solve_budget(solver_layers, layers, config: AnncConfig, fixed: frozenset[str], n_float: int,
                 model: onnx.ModelProto, sensitivity: dict | None = None, masks: bool = True) -> CompressionPlan:
    """The budget allocation of `solver_layers` (what the solver reads: normalised values),
    sized and counted in MACs by `layers` (the model's weights); `n_float` weights the
    selection left in float spend the budget at 32 bits (except under the BOPs objective)."""
    total = sum(l.values.size for l in layers) + n_float
    macs = None
    if config.objective == "bops":
        shapes = tensor_shapes(model)
        macs = {l.name: layer_macs(l, shapes) for l in layers}
    reserved = 0.0 if config.objective == "bops" else 32.0 * n_float

    def solve(config: AnncConfig) -> CompressionPlan:
        return solve_annc(solver_layers, config, fixed, reserved=reserved, total_params=total,
                          sensitivity=sensitivity, macs=macs, masks=masks)

    plan = solve(config)
    unchanged = [flag for flag, relaxed in relaxed_budgets(config).items()
                 if _allocation(solve(relaxed)) == _allocation(plan)]
    if not unchanged:
        return plan
    return replace(plan, diagnostics={**plan.diagnostics, "options_without_effect": unchanged})


def relaxed_budgets(config: AnncConfig) -> dict[str, AnncConfig]:
    """For each budget option set away from its default, the config without it."""
    default = AnncConfig(rate=config.rate, size_kb=config.size_kb)
    relaxed = {"--min-bits": replace(config, min_bits=default.min_bits),
               "--max-bits": replace(config, max_bits=default.max_bits),
               "--pow2-bits": replace(config, pow2=default.pow2)}
    if config.objective != "bops":  # a BOPs rate is not a storage rate: without it the budget is another
        relaxed["--objective"] = replace(config, objective=default.objective)
    return {flag: c for flag, c in relaxed.items() if c != config}


def _allocation(plan: CompressionPlan) -> tuple:
    """Each layer's kept count, step and clip: what a budget option could change."""
    return tuple((p.name, p.prune_count if p.mask is None else int(p.mask.sum()), p.step, p.max_code,
                  None if p.channel_steps is None else p.channel_steps.tobytes()) for p in plan.layers)


def solve_notes(plan: CompressionPlan, config) -> list[str]:
    """What the console should say about the solve."""
    notes = []
    if not plan.diagnostics.get("bits_target_met", True):
        notes.append(f"{config.bits:g} bits cannot be met with these layers and caps; see avg_bits")
    unchanged = plan.diagnostics.get("options_without_effect")
    if unchanged:
        notes.append(f"{', '.join(unchanged)} had no effect: without {'it' if len(unchanged) == 1 else 'each'} "
                     "the allocation is the same (every layer's sparsity, bits and steps)")
    return notes


def plan_model(model: onnx.ModelProto, config: OpqConfig | AnncConfig, selection: Selection = Selection(),
               output: OutputConfig = OutputConfig(), sensitivity: dict[str, float] | None = None
               ) -> CompressionPlan:
    """Solve the masks and steps of a loaded model's weights (nothing is rewritten)."""
    _, layers, skipped = find_graph_layers(model, selection)
    fixed = kept_names(layers, selection, budget=isinstance(config, AnncConfig))
    return _solve(model, layers, config, fixed, float_params(skipped), output, sensitivity)


def float_params(skipped) -> int:
    """Weights the selection left in float: they count at 32 bits in the rates."""
    return sum(math.prod(s.shape) for s in skipped if s.selected_out)


def compress_model(model: onnx.ModelProto, config: OpqConfig | AnncConfig = OpqConfig(),
                   selection: Selection = Selection(), output: OutputConfig = OutputConfig(),
                   progress=None, sensitivity: dict[str, float] | None = None) -> tuple[onnx.ModelProto, dict]:
    """Compress a loaded model; return the new model and its report (bytes not yet known).

    `config` picks the method: OpqConfig (analytic OPQ) or AnncConfig (budget
    allocation, optionally weighted by per-layer `sensitivity`).
    """
    plan = plan_model(model, config, selection, output, sensitivity)
    notes = solve_notes(plan, config)
    settings = {"method": plan.method, "config": asdict(config), "notes": notes}
    return apply_plan(model, plan, selection, output, settings, progress)


def apply_plan(model: onnx.ModelProto, plan: CompressionPlan, selection: Selection, output: OutputConfig,
               settings: dict, progress=None) -> tuple[onnx.ModelProto, dict]:
    """Rewrite `model`'s weights as `plan` says (its masks and steps, the model's current values)."""
    notes = settings.setdefault("notes", [])
    _, layers, _ = find_graph_layers(model, selection)
    model, int4 = _prepare_opset(model, plan, layers, output, notes)
    graph, layers, skipped = find_graph_layers(model, selection)  # re-read: the opset upgrade made a new graph
    plans, shapes = plan.by_name(), tensor_shapes(model)
    rows, int4_names, code_names = [], [], []
    packed = {}  # the packed format decodes each graph's layers together: rewritten at once
    if output.format == "packed":
        packed = dict(zip([layer.name for layer in layers],
                          apply_packed(graph, [(layer, plans[layer.name]) for layer in layers])))
    for layer in (progress(layers) if progress else layers):
        p = plans[layer.name]
        if output.format == "float":
            container = apply_float(layer, p)
        elif output.format == "packed":
            container = packed[layer.name]
        else:
            stored = apply_qdq(graph, layer, p, allow_int4=int4)
            container = stored.container
            int4_names += stored.int4_names
            code_names.append(stored.quantized.name)
        if p.bias is not None:  # a data-aware solve corrected the layer's bias
            write_bias(graph, layer, p.bias)
        rows.append(layer_row(layer, p, layer_codes(layer, p), container, laplace_fit(layer.values),
                              layer_macs(layer, shapes)))
    total, metadata = summarize(rows, skipped, plan, selection, output, settings)
    out = export_graph(graph, model, int4, metadata)
    pack_int4(out, int4_names)
    if output.format == "sparse":
        moved = to_sparse(out, code_names)
        notes.append(f"{len(moved)} of {len(layers)} weights in sparse storage (the others are smaller dense)")
    check_output(out, output.check_runtime)
    return out, report_dict(rows, total, skipped, settings)


def summarize(rows, skipped, plan: CompressionPlan, selection: Selection, output: OutputConfig,
             settings: dict) -> tuple[dict, dict]:
    """Complete `settings` and return the totals and the metadata stored in the output."""
    # "activations" stays in the stored settings (None: the weight pipeline never quantizes
    # activations; workflows.activations records its own section) so outputs keep their bytes
    settings.update({"selection": asdict(selection), "output": asdict(output) | {"activations": None},
                     "onnxjpq_version": __version__,
                     "kept_8bit": sorted(p.name for p in plan.layers if p.fixed)})
    total = totals(rows, float_params(skipped), 0, 0, plan.diagnostics)
    metadata = {"onnxjpq.settings": json.dumps(settings, sort_keys=True, default=str),
                "onnxjpq.totals": json.dumps({k: v for k, v in total.items()
                                              if not k.startswith(("bytes", "file"))}, sort_keys=True)}
    return total, metadata


def check_output(model: onnx.ModelProto, runtime: bool) -> None:
    """The output must pass onnx.checker's full check (strict shape inference included, except
    with sparse initializers) and load in onnxruntime, or nothing is written: a ModelError
    of one line says why."""
    if model.ByteSize() < 2**31 - 1:
        # strict shape inference does not type sparse tensors (the sparse format's codes)
        full = not any(g.sparse_initializer for g in proto_graphs(model.graph))
        try:
            onnx.checker.check_model(model, full_check=full)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"the compressed model fails onnx.checker ({first_line(exc)}); nothing was "
                             "written") from None
        if runtime:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
