"""The compression report: per-layer rows measured from the stored codes, and totals.

The rates are defined in `core.storage` (METHODS.md §1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.quant import blockable, dequantize, flat_range
from ..core.storage import entropy_bits, storage_bits
from ..core.stats import pairwise_sum
from ..graph.io import XZ_MAX_BYTES, file_bytes, xz_bytes


@dataclass(frozen=True)
class LayerRow:
    name: str
    op: str
    shape: list[int]
    params: int
    nonzero: int
    prune_ratio: float
    predicted_prune_ratio: float
    bits: float
    container: str
    step: float
    laplace_scale: float
    laplace_ks: float
    mse: float
    value_bits: int
    index_bits: int
    param_bits: int
    entropy_index_bits: float
    per_channel_steps: bool = False
    macs: int | None = None  # dense multiply-accumulates per sample
    bops: float | None = None  # MACs of the kept weights x weight bits x activation bits


def layer_row(layer, plan, codes: np.ndarray, container: str, fit, macs: int | None = None) -> LayerRow:
    """Measure one compressed layer from the codes actually stored."""
    nz = codes != 0
    value_bits, idx_bits, param_bits = storage_bits(codes, layer.axis, layer.groups,
                                                    plan.channel_steps is not None)
    nonzero = int(nz.sum())
    bits = value_bits / nonzero if nonzero else 0.0
    return LayerRow(
        name=layer.name, op=layer.op, shape=list(layer.values.shape), params=int(codes.size),
        nonzero=nonzero, prune_ratio=1 - nonzero / codes.size,
        predicted_prune_ratio=plan.predicted_prune_ratio, bits=bits, container=container,
        step=plan.step, laplace_scale=fit.scale, laplace_ks=fit.ks,
        mse=_mse(codes, plan.steps_for(codes.shape), layer.values), value_bits=value_bits,
        index_bits=idx_bits, param_bits=param_bits,
        entropy_index_bits=entropy_bits(codes.size, nonzero), macs=macs,
        per_channel_steps=plan.channel_steps is not None,
        bops=None if macs is None else macs * nonzero / codes.size * bits * plan.activation_bits)


def _mse(codes: np.ndarray, steps: float | np.ndarray, values: np.ndarray) -> float:
    """Mean squared error of the dequantized codes, in float64 temporaries of one block."""
    if not blockable(codes, values):
        return float(np.mean((dequantize(codes, steps) - values).astype(np.float64) ** 2))
    flat_codes, flat_values, steps = codes.reshape(-1), values.reshape(-1), np.asarray(steps)

    def squares(lo: int, hi: int) -> np.ndarray:
        err = dequantize(flat_codes[lo:hi], flat_range(steps, codes.shape, lo, hi)) - flat_values[lo:hi]
        return err.astype(np.float64) ** 2

    return float(pairwise_sum(codes.size, squares) / codes.size)


def totals(rows: list[LayerRow], float_params: int, bytes_in: int, bytes_out: int,
           diagnostics: dict) -> dict:
    """Model-level figures; `float_params` are selected-out weights left at 32 bits."""
    params = sum(r.params for r in rows) + float_params
    nonzero_q = sum(r.nonzero for r in rows)
    nonzero = nonzero_q + float_params
    value = sum(r.value_bits for r in rows) + 32 * float_params
    storage = value + sum(r.index_bits + r.param_bits for r in rows)
    entropy = value + sum(r.entropy_index_bits + r.param_bits for r in rows)
    known = [r for r in rows if r.macs is not None]
    macs = sum(r.macs for r in known)
    bops = sum(r.bops for r in known)
    return {
        "layers": len(rows),
        "params": params,
        "nonzero": nonzero,
        "prune_ratio": 1 - nonzero / params if params else 0.0,
        "avg_bits": sum(r.value_bits for r in rows) / nonzero_q if nonzero_q else 0.0,
        "rate": 32 * params / value if value else 0.0,
        "storage_rate": 32 * params / storage if storage else 0.0,
        "entropy_storage_rate": 32 * params / entropy if entropy else 0.0,
        "float_params": float_params,
        "macs": macs if known else None,
        "bops": bops if known else None,
        "bops_ratio": 1024 * macs / bops if known and bops else None,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "file_ratio": bytes_in / bytes_out if bytes_out else 0.0,
        **diagnostics,
    }


def file_totals(src, dst, bytes_out: int) -> dict:
    """The file figures of the totals: bytes in and out (external data included), their
    ratio, and the output's xz -0 size (`graph.io.xz_bytes`; None past XZ_MAX_BYTES)."""
    bytes_in = file_bytes(src)
    return {"bytes_in": bytes_in, "bytes_out": bytes_out, "file_ratio": bytes_in / bytes_out,
            "bytes_xz": xz_bytes(dst) if bytes_out <= XZ_MAX_BYTES else None}


def report_dict(rows: list[LayerRow], total: dict, skipped: list, settings: dict) -> dict:
    return {
        "totals": total,
        "settings": settings,
        "layers": [asdict(r) for r in rows],
        "skipped": [{"name": s.name, "op": s.op, "shape": list(s.shape), "reason": s.reason}
                    for s in skipped],
    }


def print_report(report: dict, console) -> None:
    """A rich table of the layers, the skipped weights, and the totals."""
    from rich.table import Table

    table = Table(title="onnxjpq: per-layer compression", header_style="bold")
    for col in ("layer", "op", "shape", "params", "pruned", "bits", "store", "step", "laplace τ"):
        table.add_column(col, justify="left" if col in ("layer", "op", "shape", "store") else "right")
    for r in report["layers"]:
        table.add_row(_short(r["name"]), r["op"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
                      f"{r['prune_ratio']:.1%}", f"{r['bits']:.2f}", r["container"],
                      f"{r['step']:.3g}", f"{r['laplace_scale']:.3g}")
    console.print(table)
    for s in report["skipped"]:
        console.print(f"[dim]skipped {s['name']} ({s['op']} {'x'.join(map(str, s['shape']))}): {s['reason']}[/dim]")
    t = report["totals"]
    config = report["settings"].get("config", {})
    zeros = (f"pruned none ({t['prune_ratio']:.2%} rounded to zero)" if config.get("prune") == 0
             and report["settings"].get("method") == "opq" else f"pruned {t['prune_ratio']:.2%}")
    console.print(
        f"params {t['params']:,}  nonzero {t['nonzero']:,}  {zeros}  "
        f"avg bits {t['avg_bits']:.2f}  rate {t['rate']:.1f}x  storage rate {t['storage_rate']:.1f}x  "
        f"file {t['bytes_in']:,} -> {t['bytes_out']:,} bytes ({size_change(t['file_ratio'])}"
        + (f", {t['bytes_xz']:,} with xz" if t.get("bytes_xz") else "") + ")"
        + (f"  BOPs {t['bops_ratio']:.1f}x fewer" if t.get("bops_ratio") else ""))
    for note in report["settings"].get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def size_change(ratio: float) -> str:
    """A file ratio (bytes in / bytes out) in words.

    >>> size_change(4.04), size_change(0.98), size_change(1.0)
    ('4.0x smaller', '1.02x larger', 'the same size')
    """
    if round(ratio, 2) == 1:
        return "the same size"
    return f"{ratio:.1f}x smaller" if ratio > 1 else f"{1 / ratio:.2f}x larger"
