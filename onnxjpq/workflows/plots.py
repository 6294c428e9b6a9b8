"""PNG figures: a sweep's accuracy against rate, per-layer bits and pruning, per-layer sensitivity.

matplotlib is optional (`pip install onnxjpq[plot]`) and imported only here,
inside the functions; figures are drawn on the Agg canvas directly, so no
pyplot state or global backend is touched.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import OptionError

DPI = 130


def require_matplotlib() -> None:
    """Refuse early, in one line, when the figures cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError("figures need matplotlib: pip install 'onnxjpq[plot]' (or pass --no-plot)") from None


def _figure(width: float, height: float, rows: int = 1):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def _save(fig, path: str | os.PathLike, name: str) -> Path:
    """Write the figure to `path`, or to `path`/`name` when `path` is not a .png (a folder, created)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path.mkdir(parents=True, exist_ok=True)
        path = path / name
    elif not path.parent.is_dir():
        raise OptionError(f"folder {path.parent} does not exist")
    fig.savefig(path, dpi=DPI)
    return path


def _layer_width(count: int) -> float:
    return min(max(6.0, 0.45 * count + 2.0), 40.0)


def _label_layers(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                       fontsize=9 if len(names) <= 40 else 6)


def plot_layers(report: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Per-layer bit-width (top) and pruning ratio (bottom) bars of a compression report.

    `path` is a .png file, or a folder that gets `layers.png`; returns the file written.
    """
    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    fig, (top, bottom) = _figure(_layer_width(len(names)), 6.0, rows=2)
    from matplotlib.patches import Patch

    colors = {"int4": "tab:blue", "int8": "tab:orange", "float32": "tab:gray"}
    x = range(len(names))
    bits = [layer["bits"] for layer in layers]
    bars = top.bar(x, bits, color=[colors.get(layer["container"], "tab:green") for layer in layers])
    used = [c for c in colors if any(layer["container"] == c for layer in layers)]
    top.legend(handles=[Patch(color=colors[c], label=f"stored as {c}") for c in used], loc="upper right",
               fontsize=8, ncols=len(used))
    top.set_ylim(0, max(bits, default=8) * 1.3)
    top.set_ylabel("bits per kept weight")
    pruned = bottom.bar(x, [100 * layer["prune_ratio"] for layer in layers], color="tab:red")
    if len(names) <= 40:
        top.bar_label(bars, fmt="%.2f", fontsize=7)
        bottom.bar_label(pruned, fmt="%.0f", fontsize=7)
    bottom.set_ylabel("pruned weights (%)")
    bottom.set_ylim(0, 100)
    bottom.set_xlabel("layer (weight tensor)")
    _label_layers(bottom, names)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    t = report.get("totals", {})
    fig.suptitle(title or (f"per-layer compression: pruned {t.get('prune_ratio', 0):.1%}, avg bits "
                           f"{t.get('avg_bits', 0):.2f}, rate {t.get('rate', 0):.1f}x"), fontsize=11)
    return _save(fig, path, "layers.png")


def plot_sweep(summary: dict, path: str | os.PathLike, highlight: dict | None = None) -> Path:
    """The sweep's metric against rate (log axis): every point, the summary's Pareto front, and fp32."""
    metric, rows, ref = summary["metric"], summary["points"], summary["reference"]
    fig, (ax,) = _figure(7.5, 5.0)
    rates, scores = [r["rate"] for r in rows], [r[metric] for r in rows]
    ax.scatter(rates, scores, color="tab:blue", zorder=3, label="grid points")
    for r in rows:
        ax.annotate(f"p{r['prune']:g} b{r['bits']:g}", (r["rate"], r[metric]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    on_front = {tuple(point) for point in summary["pareto"]}
    front = sorted((r for r in rows if (r["prune"], r["bits"]) in on_front), key=lambda r: r["rate"])
    ax.plot([r["rate"] for r in front], [r[metric] for r in front], color="tab:red", marker="o", zorder=2,
            label="Pareto front")
    ax.axhline(ref[metric], color="black", linestyle="--", linewidth=1, label=f"fp32 ({ref[metric]:.2f} %)")
    if highlight is not None:
        ax.scatter([highlight["rate"]], [highlight[metric]], s=160, facecolors="none", edgecolors="tab:green",
                   linewidths=2, zorder=4, label="per-layer figure")
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.set_xlabel("compression rate: 32-bit weights / stored value bits (log scale)")
    ax.set_ylabel(f"top-1 {metric} (%)" + (" with fp32" if metric == "agreement" else ""))
    ax.set_title(f"{Path(summary['source']).name}: {metric} against compression rate", fontsize=11)
    ax.grid(which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path, "sweep.png")


def plot_sensitivity(result: dict, path: str | os.PathLike) -> Path:
    """Per-layer output SNR (top) and metric drop (bottom) when only that layer is compressed."""
    rows, metric = result["layers"], result["metric"]
    names = [r["layer"] for r in rows]
    fig, (top, bottom) = _figure(_layer_width(len(names)), 6.0, rows=2)
    x = range(len(names))
    snr = [r["snr_db"] if r["snr_db"] is not None and math.isfinite(r["snr_db"]) else math.nan for r in rows]
    top.bar(x, snr, color="tab:purple")
    top.set_ylabel("output SNR vs fp32 (dB)")
    bottom.bar(x, [r[f"{metric}_drop"] for r in rows], color="tab:red")
    bottom.set_ylabel(f"{metric} drop (points)")
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_xlabel(f"layer, most harmful first (ranked by {result['rank_by']})")
    _label_layers(bottom, names)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    s = result["settings"]
    fig.suptitle(f"{Path(result['source']).name}: each layer compressed alone at --prune {s['prune']:g} "
                 f"--bits {s['bits']:g}", fontsize=11)
    return _save(fig, path, "sensitivity.png")
