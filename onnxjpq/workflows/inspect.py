"""`onnxjpq inspect`: the compressible weights of a model and their Laplace fit."""

from __future__ import annotations

import os

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ModelError
from ..graph.io import load_model
from ..graph.ops import weight_ops_text
from ..graph.layers import Selection, find_layers, kept_names
from ..core.stats import laplace_fit


def inspect_file(path: str | os.PathLike, selection: Selection = Selection()) -> dict:
    """Per-layer facts of the model at `path`: op, shape, params, channel axis, Laplace fit."""
    model = load_model(path)
    layers, skipped = find_layers(gs.import_onnx(model), selection)
    if not layers and not skipped:
        raise ModelError(f"{path}: no {weight_ops_text()} with a constant weight")
    kept = kept_names(layers, selection)
    rows = []
    for layer in layers:
        fit = laplace_fit(layer.values)
        rows.append({"name": layer.name, "op": layer.op, "nodes": layer.node_names,
                     "shape": list(layer.values.shape), "params": int(layer.values.size),
                     "channel_axis": layer.axis, "laplace_scale": fit.scale, "laplace_ks": fit.ks,
                     "abs_max": float(np.abs(layer.values).max(initial=0.0)), "keep_8bit": layer.name in kept})
    return {"model": str(path), "params": sum(r["params"] for r in rows), "layers": rows,
            "skipped": [{"name": s.name, "op": s.op, "shape": list(s.shape), "reason": s.reason}
                        for s in skipped]}


def print_inspection(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"{result['model']}: compressible weights", header_style="bold")
    for col in ("layer", "op", "shape", "params", "axis", "laplace τ", "KS fit", "max |w|"):
        table.add_column(col, justify="left" if col in ("layer", "op", "shape") else "right")
    for r in result["layers"]:
        table.add_row(r["name"], r["op"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
                      "-" if r["channel_axis"] is None else str(r["channel_axis"]),
                      f"{r['laplace_scale']:.4g}", f"{r['laplace_ks']:.3f}", f"{r['abs_max']:.4g}")
    console.print(table)
    for s in result["skipped"]:
        console.print(f"[dim]skipped {s['name']} ({s['op']}): {s['reason']}[/dim]")
    console.print(f"{len(result['layers'])} layers, {result['params']:,} params "
                  "(KS fit: Kolmogorov-Smirnov distance of |w| to the fitted law; 0 = perfect)")
