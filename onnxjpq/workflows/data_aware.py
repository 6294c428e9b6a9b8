"""Data-aware post-training compression: each layer solved on its captured inputs (METHODS.md §7).

With calibration data every mode takes this path:

1. The model becomes a capture template (runtime.probe): weights and biases are
   graph inputs, so any mix of compressed and fp32 weights is one feed away;
   layers get a bias where bias correction needs one (rewrite.bias).
2. One fp32 pass captures each layer's column means (the bias-correction
   target), and in the budget modes its Hessian, from which each layer's
   (bits, sparsity, grid) options are scored (workflows.data_budget).
3. Sequential capture (the default): layers are solved stage by stage in
   topological order. A stage is the longest run of consecutive layers none of
   whose inputs depends on another layer of the stage (q, k and v of an
   attention block share a stage; a plain CNN gets one layer per stage); its
   inputs are captured from the model whose earlier stages are already
   compressed (their dequantized weights and corrected biases fed), running only
   the part of the network the stage needs. Independent capture: one fp32 pass
   for everything.
4. Each layer is solved (methods.layerwise: GPTQ/SparseGPT, or rounding for
   layers with few inputs per output; RTN for comparison), its bias corrected to
   the fp32 output mean (b̂ = b + Wμ − Ŵμ̂), and the plan (codes, steps, bias) is
   written by pipeline.compress.apply_plan.
5. A last pass measures each layer's output error in the compressed model, and
   the model's, against fp32 on the calibration data.

Layers whose inputs cannot be captured are solved data-free (RTN on the grid of
least weight error), with the reason in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..core.plan import CompressionPlan, LayerPlan
from ..core.quant import dequantize, to_channels
from ..errors import OptionError
from ..graph.layers import Selection, WeightLayer, kept_names
from ..methods.annc import AnncConfig, unbound_bit_limits
from ..methods.bias_correction import bias_shift
from ..methods.layerwise import (SOLVERS, LayerOption, choose_target_damp, fp32_error, fp32_target,
                                 grouped, relative, solve_layer)
from ..methods.opq import OpqConfig
from ..pipeline.compress import OutputConfig, apply_plan, find_graph_layers
from ..rewrite.bias import BiasSite, bias_site, bias_tensor_name, current_bias, ensure_bias
from ..runtime.capture import capture_pairs, capture_stats, merge_pairs
from ..runtime.layer_view import LayerView, layer_view
from ..runtime.data import Dataset
from ..runtime.probe import make_template, stages
from . import data_budget as budget
from .data_options import fixed_options, grids
from .data_report import measure, report_section


RETRIES = 3  # budget-mode solves started again after an overshoot (compress_data_aware)
CHECK_EVERY = 4  # every 4th calibration sample also checks the fp32 target's fit (its ridge λ)
GPTQ_DAMPS = (0.01, 0.1)  # GPTQ's damping λ: the held-out choice, kept within these
SCARCE_SAMPLES = 8  # Hessian samples per column below which the compensation fits the calibration set
SCARCE_DAMP = 0.05  # ... and GPTQ's λ is at least this (MiniLM: 1,865 tokens for 1,536 columns)


@dataclass(frozen=True)
class DataAwareConfig:
    """How calibration data is used.

    solver: "gptq" (error compensation; rounding for small layers) or "rtn" (round to nearest
    on the grid of least output error: the baseline). sequential: capture each stage from the
    partly compressed model (else one fp32 pass). samples: calibration samples used.
    bias_correction: correct each layer's mean output error. sensitivity: weigh each layer's
    error in the budget allocation by its measured effect on the model's outputs. fp32_target:
    with sequential capture, solve each layer for its fp32 outputs from the inputs it now sees
    (methods.layerwise.fp32_target; else for its weights on those inputs). anchor_rounds: budget
    modes, rounds of exact solves of sample rows at the options the allocation picks before it
    allocates again (0: the compensation-weighted estimates alone). batch_mb: captured tensors per
    batch; hessian_mb: Hessians held at once by the fp32 pass of the budget modes.
    """

    solver: str = "gptq"
    sequential: bool = True
    samples: int = 128
    bias_correction: bool = True
    sensitivity: bool = True
    fp32_target: bool = True
    anchor_rounds: int = 0
    batch_mb: int = 256
    hessian_mb: int = 1024
    small_cols: int = 16

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise OptionError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.samples < 1 or self.batch_mb < 1 or self.hessian_mb < 1:
            raise OptionError("calibration samples and memory limits must be positive")


@dataclass(eq=False)
class _Entry:
    """One layer through the run."""

    layer: WeightLayer
    view: LayerView
    captured: bool  # False: solved data-free (`reason` says why)
    reason: str | None
    site: BiasSite | None = None
    bias_reason: str | None = None
    fixed: bool = False
    option: LayerOption | None = None
    table: budget.OptionTable | None = None
    choice: int | None = None
    method: str = ""  # the solver that solved it (methods.layerwise)
    plan: LayerPlan | None = None
    cost: float = 0.0
    mean_target: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass
class _Run:
    model: onnx.ModelProto
    config: OpqConfig | AnncConfig
    options: DataAwareConfig
    calib: Dataset
    entries: list[_Entry]
    template: object
    feed: dict[str, np.ndarray]
    say: object
    skipped: list  # the weights left as they are (graph.layers.Skipped)
    weights: dict[str, float] = field(default_factory=dict)  # the allocation's layer weights


def compress_data_aware(model: onnx.ModelProto, config: OpqConfig | AnncConfig, selection: Selection,
                        output: OutputConfig, calib: Dataset, options: DataAwareConfig = DataAwareConfig(),
                        log=None) -> tuple[onnx.ModelProto, dict]:
    """Compress `model` as `config` asks, every layer solved on its inputs over `calib`.

    `log(line)` receives a progress line per layer (None: silent). Where the layers solved first
    leave the last ones too little of the budget (their cost estimates were optimistic), the
    solve starts again within a budget smaller by the overshoot (at most RETRIES times)."""
    scale, known = 1.0, {}
    for attempt in range(RETRIES + 1):
        try:
            return _compress(model, config, selection, output, calib, options, log, scale, known)
        except budget.Overshoot as miss:
            if attempt == RETRIES:
                raise
            known |= miss.zeros
            if attempt:  # the measured zero shares were not enough: a smaller budget too
                scale *= 0.99 * miss.total / miss.need
            if log:
                log(f"data-aware: {miss}; solving again with the zero shares the solves measured "
                    f"within {scale:.1%} of it")


def _compress(model, config, selection, output, calib, options, log, scale: float, known: dict):
    """One solve; `known`: (layer, option) -> share of kept weights an earlier solve left at 0,
    replacing the estimates'."""
    run = _prepare(model, config, selection, calib, options, log or (lambda line: None))
    captured = [e for e in run.entries if e.captured]
    total, macs = None, {}
    if isinstance(config, AnncConfig):
        macs = budget.bops_macs(model, run.entries, calib) if config.objective == "bops" else {}
        total = scale * budget.budget_total(config, run.entries, run.skipped, macs)
        fp32 = _fp32_pass(run, captured, True, lambda chunk, stats: budget.score_tables(
            run, chunk, stats, macs, grids))
        budget.score_tables(run, [e for e in run.entries if not e.captured], {}, macs, grids)
        for (name, index), zeros in known.items():
            next(e for e in run.entries if e.name == name).table.estimates.zeros[index] = zeros
        run.weights = budget.layer_weights(run)
    else:
        paired = options.sequential and options.fp32_target  # the stages capture the fp32 means too
        fp32 = {} if paired else _fp32_pass(run, captured, not options.sequential, None)
        fixed_options(run, selection, output)
    order = (stages(run.template.model, [(e.name, e.view.tensors) for e in captured]) if options.sequential
             else [[e.name for e in captured]])
    try:
        _solve_all(run, order, None if options.sequential else fp32, total, macs)
    except budget.Overshoot as miss:
        miss.zeros = {(e.name, e.choice): budget.zero_share(e) for e in run.entries
                      if e.plan is not None and e.choice is not None}
        raise
    plan = CompressionPlan(tuple(e.plan for e in run.entries), f"data-aware-{options.solver}",
                           {} if total is None else {"budget": total})
    widths = [e.option.bits for e in run.entries if e.table is not None and e.option is not None]
    settings = {"method": plan.method, "config": asdict(config),
                "notes": unbound_bit_limits(config, widths) if isinstance(config, AnncConfig) else [],
                "data_aware": asdict(options) | {"stages": len(order)}}
    section = report_section(run, order, measure(run))
    run.template, run.feed = None, {}  # the weights they hold are not needed to write the model
    out, report = apply_plan(model, plan, selection, output, settings)
    report["data_aware"] = section
    return out, report


def _prepare(model, config, selection, calib, options, say) -> _Run:
    """The template graph (biases ensured), each layer's view, and the capture template."""
    graph, layers, skipped = find_graph_layers(model, selection)
    fixed = kept_names(layers, selection, budget=isinstance(config, AnncConfig))
    entries = []
    for layer in layers:
        view = layer_view(layer, graph)
        entry = (_Entry(layer, view, True, None) if isinstance(view, LayerView)
                 else _Entry(layer, _plain_view(layer), False, view))
        entry.fixed = layer.name in fixed
        entries.append(entry)
    for entry in entries:
        if options.bias_correction and entry.captured:
            site = bias_site(graph, entry.layer)
            if isinstance(site, str):
                entry.bias_reason = site
            else:
                entry.site = ensure_bias(graph, site)
    names = {e.name for e in entries} | {bias_tensor_name(e.site) for e in entries if e.site}
    template = make_template(gs.export_onnx(graph), names)
    return _Run(model, config, options, calib, entries, template, {}, say, skipped)


def _plain_view(layer: WeightLayer) -> LayerView:
    """A data-free layer as [channels, weights per channel] (its output-channel layout)."""
    index = to_channels(np.arange(layer.values.size).reshape(layer.values.shape), layer.axis, layer.groups)
    channels = np.arange(index.shape[0]) if layer.axis is not None and layer.groups == 1 else None
    return LayerView(layer.name, (), index, 1, channels)


def _fp32_pass(run: _Run, entries: list[_Entry], full: bool, on_chunk) -> dict:
    """fp32 statistics of the captured layers (only the means unless `full`), in passes that
    hold at most `hessian_mb` of Hessians; `on_chunk(entries, stats)` sees each pass's."""
    stats, chunk, held = {}, [], 0
    limit = run.options.hessian_mb << 20
    for entry in entries + [None]:
        size = 0 if entry is None else 8 * entry.view.groups * entry.view.cols ** 2 * full
        if chunk and (entry is None or held + size > limit):
            part = capture_stats(run.template, [e.view for e in chunk], run.calib, run.options.samples, {},
                                 run.options.batch_mb << 20, means_only=not full)
            for e in chunk:
                e.mean_target = part[e.name].mean
            if on_chunk is not None:
                on_chunk(chunk, part)
            stats |= part
            run.say(f"data-aware: captured the fp32 inputs of {len(stats)}/{len(entries)} layers")
            chunk, held = [], 0
        if entry is not None:
            chunk.append(entry)
            held += size
    return stats


def _solve_all(run: _Run, order: list[list[str]], fp32: dict | None, total: float | None, macs: dict) -> None:
    """Data-free layers first, then the stages in order (the budget re-allocated before each)."""
    by_name = {e.name: e for e in run.entries}
    free = [e for e in run.entries if not e.captured]
    if total is not None:
        tables = {e.name: e.table for e in run.entries}
        choice = budget.allocate_anchored(tables, run.weights, total, run.options.anchor_rounds)
        run.say(f"data-aware: allocated the budget ({sum(len(t.estimates.solved) for t in tables.values())} "
                "exact solves of sample rows)")
        for entry in run.entries:
            entry.choice = choice[entry.name]
            entry.table.estimates.release()
    for entry in free:
        _solve(run, entry, _Inputs.data_free(entry), macs)
        _commit(run, entry)
    for names in order:
        stage = [by_name[n] for n in names]
        inputs = _stage_inputs(run, stage, fp32)
        if total is not None:
            budget.allocate_rest(run, total, stage)
        for entry in stage:
            _solve(run, entry, inputs[entry.name], macs)
        if total is not None:
            budget.fit_stage(run, total, stage, inputs, lambda e, i: _solve(run, e, i, macs))
        for entry in stage:
            _commit(run, entry)
        del inputs


@dataclass(frozen=True)
class _Inputs:
    """What a layer's solve needs of its inputs: the Hessians of what it sees, the matrix it aims
    at, the input means (seen, and fp32 for the bias target) and, paired, Σxxᵀ and Σxx̂ᵀ."""

    data: object
    target: np.ndarray
    mean_in: np.ndarray | None = None
    mean_target: np.ndarray | None = None
    fp32: np.ndarray | None = None
    cross: np.ndarray | None = None
    target_damp: float | None = None

    @staticmethod
    def data_free(entry: _Entry) -> "_Inputs":
        return _Inputs(None, entry.view.matrix(entry.layer.values).astype(np.float64))


def _stage_inputs(run: _Run, stage: list[_Entry], fp32: dict | None) -> dict[str, _Inputs]:
    """The stage's inputs: from the fp32 pass (independent capture), from the partly compressed
    model (sequential), paired with the fp32 model's for the fp32 target."""
    views = [e.view for e in stage]
    args = (run.template, views, run.calib, run.options.samples, run.feed, run.options.batch_mb << 20)
    out = {}
    if fp32 is None and run.options.fp32_target:
        fit, check = capture_pairs(*args, check_every=CHECK_EVERY)
        for e in stage:
            out[e.name] = _paired_inputs(e, fit[e.name], check.get(e.name))
        return out
    stats = fp32 if fp32 is not None else capture_stats(*args)
    for e in stage:
        s = stats[e.name]
        weights = e.view.matrix(e.layer.values).astype(np.float64)
        out[e.name] = _Inputs(grouped(s.xxt, e.view.rows, s.count), weights, s.mean, e.mean_target)
    return out


def _paired_inputs(entry: _Entry, fit, check) -> _Inputs:
    """The fp32 target from all samples, its ridge λ chosen on the check samples (also GPTQ's
    damping, within 0.01..0.1: data that cannot pin the target down cannot pin compensation)."""
    w, rows = entry.view.matrix(entry.layer.values).astype(np.float64), entry.view.rows
    damp = None
    if check is not None:
        damp = choose_target_damp(w, grouped(fit.hat.xxt, rows), fit.cross, grouped(check.hat.xxt, rows),
                                  check.fp32.xxt, check.cross)
    pair = merge_pairs(fit, check)
    data = grouped(pair.hat.xxt, rows, pair.hat.count)
    if damp is not None:
        data = replace(data, damp=gptq_damp(damp, data.count, data.hessians.shape[-1]))
    return _Inputs(data, fp32_target(w, data, pair.cross, damp), pair.hat.mean, pair.fp32.mean,
                   pair.fp32.xxt, pair.cross, damp)


def gptq_damp(chosen: float, count: int, cols: int) -> float:
    """GPTQ's λ from the fp32 target's held-out choice, within GPTQ_DAMPS, and at least
    SCARCE_DAMP where the Hessian sums fewer than SCARCE_SAMPLES samples per column: there its
    compensation fits the calibration samples more than the data (MiniLM at 128 sentences:
    held-out cosine about 0.990 against 0.999 on the calibration sentences).

    >>> gptq_damp(0.01, 100_000, 64), gptq_damp(0.01, 1000, 384), gptq_damp(1.0, 1000, 384)
    (0.01, 0.05, 0.1)
    """
    low, high = GPTQ_DAMPS
    if count and count < SCARCE_SAMPLES * cols:
        low = max(low, SCARCE_DAMP)
    return float(np.clip(chosen, low, high))


def _solve(run: _Run, entry: _Entry, inputs: _Inputs, macs: dict) -> None:
    """Solve one layer at its option; its plan, errors and measured cost (the bias in `_commit`)."""
    option = entry.option if entry.table is None else entry.table.options[entry.choice]
    view, layer = entry.view, entry.layer
    if view.channel_of_row is None:
        option = replace(option, per_channel=False)
    entry.option = option
    solved = solve_layer(inputs.target, inputs.data, option, run.options.solver, run.options.small_cols)
    codes = view.stored(solved.codes, layer.values).astype(np.int32)
    per_channel = option.per_channel or len(np.unique(solved.steps)) > 1
    steps = None
    if per_channel:
        steps = np.zeros(layer.values.shape[layer.axis % layer.values.ndim], np.float32)
        steps[view.channel_of_row] = solved.steps
    step = float(np.median(steps)) if steps is not None else float(solved.steps[0])
    entry.method = solved.method
    plan = LayerPlan(layer.name, codes != 0 if option.sparsity > 0 else np.ones(codes.shape, bool),
                     step if step > 0 else 1.0, keep_survivors=option.sparsity > 0, fixed=entry.fixed,
                     predicted_prune_ratio=option.sparsity, max_code=option.max_code,
                     channel_steps=steps, channel_axis=layer.axis if per_channel else None, codes=codes)
    values = dequantize(codes, plan.steps_for(layer.values.shape))
    if entry.site is not None and inputs.mean_in is not None:
        w, w_hat = view.matrix(layer.values), view.matrix(values)
        base = current_bias(entry.site)
        shift = entry.site.scale * bias_shift(w, w_hat, inputs.mean_in, inputs.mean_target)
        plan = replace(plan, bias=((np.zeros(shift.shape) if base is None else base) + shift).astype(np.float32))
    entry.plan = plan
    target_error, target_rtn = relative(solved)
    error = target_error
    if inputs.cross is not None:
        e, energy = fp32_error(view.matrix(layer.values), view.matrix(values), inputs.fp32, inputs.cross,
                               inputs.data)
        error = e / energy if energy > 0 else 0.0
    entry.info = {"solve_error": error, "target_error": target_error, "target_rtn_error": target_rtn,
                  "target_damp": inputs.target_damp}
    objective = run.config.objective if isinstance(run.config, AnncConfig) else "size"
    entry.cost = budget.measured_cost(codes, layer.axis, layer.groups, per_channel, objective, macs.get(layer.name))


def _commit(run: _Run, entry: _Entry) -> None:
    """Feed the layer's compressed values and bias to the later captures; log it."""
    layer, plan = entry.layer, entry.plan
    if plan.bias is not None:
        name = bias_tensor_name(entry.site)
        run.feed[name] = plan.bias.reshape(run.template.values[name].shape)
    if layer.name in run.template.values:
        values = dequantize(plan.codes, plan.steps_for(layer.values.shape))
        run.feed[layer.name] = values.astype(run.template.values[layer.name].dtype)
    done = sum(e.name in run.feed or not e.captured and e.plan is not None for e in run.entries)
    run.say(f"data-aware: [{done}/{len(run.entries)}] {layer.name}: {entry.method}, "
            f"{entry.option.bits} bits, {entry.option.sparsity:.0%} pruned, "
            f"{'channel' if plan.channel_steps is not None else 'layer'} steps, relative output error "
            f"{entry.info['solve_error']:.3g} (rtn on the same target {entry.info['target_rtn_error']:.3g})")


