"""What a data-aware layer may be solved at (workflows.data_aware): the step grids it may use,
and with --prune/--bits its one fixed option. `entry` and `run` are data_aware's `_Entry` and
`_Run`."""

from __future__ import annotations

from ..graph.layers import Selection
from ..methods.layerwise import LayerOption
from ..pipeline.compress import OutputConfig, plan_model


def grids(entry, granularity: str) -> tuple[bool, ...]:
    """The step grids a layer may use: per channel (where its rows are its channels) or one."""
    if entry.view.channel_of_row is None:
        return (False,)
    if granularity == "layer":  # GPTQ solves groups apart: each gets its own steps
        return (False,) if entry.view.groups == 1 else (True,)
    return (True,) if granularity == "channel" else (True, False)


def fixed_options(run, selection: Selection, output: OutputConfig) -> None:
    """--prune/--bits: each layer's sparsity from the data-free OPQ plan, one code width for all
    (the largest code of `bits`-bit storage, floor((2^bits - 1)/2)) but 8 bits for the kept layers."""
    config = run.config
    ratios = {}
    if config.prune > 0:
        values = {e.name: e.layer.values for e in run.entries}
        plan = plan_model(run.model, config, selection, output)
        ratios = {p.name: 1.0 - float(p.mask_for(values[p.name]).mean()) for p in plan.layers}
    m = max(1, int((2 ** config.bits - 1) // 2))
    for entry in run.entries:
        sparsity, code = (0.0, 127) if entry.fixed else (ratios.get(entry.name, 0.0), m)
        allowed = grids(entry, config.granularity)
        per_channel = allowed[0] if len(allowed) == 1 else _channel_steps_pay(entry, sparsity, code)
        entry.option = LayerOption(code, sparsity, per_channel)


def _channel_steps_pay(entry, sparsity: float, max_code: int) -> bool:
    """auto grid with fixed bits: per-channel steps where they add at most 5 % to the layer's bits."""
    channels = entry.view.rows
    kept = entry.layer.values.size * (1 - sparsity)
    return 32 * (channels - 1) <= 0.05 * kept * LayerOption(max_code).bits
