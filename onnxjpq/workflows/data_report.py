"""What the report says of a data-aware run: each layer's solver, option and errors.

Per layer: `predicted_error` (the allocation's estimate of the option's relative
output error, or the solve's own with fixed bits), `solve_error` (the solve's
relative output error on the inputs the layer sees, against its fp32 outputs when
sequential), `target_error`/`target_rtn_error` (the solver's and round to
nearest's error against the matrix it aimed at) and `measured_error` (the
layer's relative output error in the compressed model against the fp32 one, on
up to MEASURE_SAMPLES calibration samples); `data_free_reason` and `bias_reason`
say why a layer was not solved on data or not bias-corrected.
"""

from __future__ import annotations

import numpy as np

from ..runtime.probe import relative_errors

MEASURE_SAMPLES = 64  # calibration samples the report's measured errors are taken on


def measured_tensor(entry) -> str | None:
    """The tensor holding the layer's (biased) output, for a layer of one consumer."""
    if not entry.captured or len(entry.view.uses) != 1 or not entry.view.uses[0].output:
        return None
    return entry.site.node.outputs[0].name if entry.site is not None else entry.view.uses[0].output


def measure(run) -> dict:
    """Each layer's output error (where its bias lives, if it has one) and the model's."""
    graph = run.template.model.graph
    outputs = {e.name: measured_tensor(e) for e in run.entries if measured_tensor(e)}
    finals = [o.name for o in graph.output]
    errors = relative_errors(run.template, [*outputs.values(), *finals], run.calib,
                             min(run.options.samples, MEASURE_SAMPLES), {}, run.feed, run.options.batch_mb << 20)
    model = [errors[n] for n in finals if n in errors]
    return {"layers": {name: errors.get(t) for name, t in outputs.items()},
            "model": float(np.mean(model)) if model else None}


def report_section(run, order, measured: dict) -> dict:
    """The report's data_aware section: the run's settings and a row per layer."""
    rows = []
    for e in run.entries:
        predicted = float(e.table.errors[e.choice]) if e.table is not None else e.info.get("solve_error")
        rows.append({"name": e.name, "solver": e.method, "bits": e.option.bits,
                     "sparsity": e.option.sparsity, "per_channel_steps": e.plan.channel_steps is not None,
                     "predicted_error": predicted, **e.info, "measured_error": measured["layers"].get(e.name),
                     "data_free_reason": e.reason, "bias_corrected": e.plan.bias is not None,
                     "bias_reason": e.bias_reason})
    return {"solver": run.options.solver, "sequential": run.options.sequential,
            "samples": min(run.options.samples, len(run.calib)), "stages": len(order),
            "stage_rule": "consecutive layers whose inputs depend on no other layer of the stage"
            if run.options.sequential else "one fp32 pass (independent capture)",
            "relative_output_error": measured["model"], "layers": rows}
