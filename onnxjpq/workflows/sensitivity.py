"""Per-layer sensitivity: compress one layer at a time, measure the damage, rank the layers.

Each compressible layer alone is pruned and quantized at the given OPQ
settings (every other weight stays fp32), and the model is compared with the
fp32 model on the data: output SNR, top-1 agreement, and top-1 accuracy when
the data has labels. Layers are ranked most harmful first, by SNR (lowest
first, the default: a smooth measure even on little data) or by the drop in
accuracy (agreement without labels).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import asdict, dataclass

from ..errors import OptionError

RANK_BY = ("snr", "drop")


@dataclass(frozen=True)
class SensitivityConfig:
    """OPQ settings applied to each layer alone, how to rank, and the data options."""

    prune: float = 0.5
    bits: float = 4.0
    rank_by: str = "snr"
    min_params: int = 64
    batch: int = 64
    labels_key: str = "labels"
    threads: int = 0

    def __post_init__(self):
        from ..methods.opq import OpqConfig

        OpqConfig(prune=self.prune, bits=self.bits)  # checks the ranges
        if self.rank_by not in RANK_BY:
            raise OptionError(f"rank by must be one of {', '.join(RANK_BY)}, got {self.rank_by!r}")
        if self.batch < 1 or self.threads < 0 or self.min_params < 0:
            raise OptionError("batch must be >= 1, threads and min params >= 0")


def rank_layers(rows: list[dict], rank_by: str, metric: str) -> list[dict]:
    """Rows sorted most harmful first, each given its `rank` (1 = most harmful).

    >>> rows = [{"layer": "a", "snr_db": 30.0, "accuracy_drop": 0.1}, {"layer": "b", "snr_db": 12.0,
    ...         "accuracy_drop": 0.0}, {"layer": "c", "snr_db": None, "accuracy_drop": None}]
    >>> [r["layer"] for r in rank_layers(rows, "snr", "accuracy")]
    ['b', 'a', 'c']
    >>> [r["layer"] for r in rank_layers(rows, "drop", "accuracy")]
    ['a', 'b', 'c']
    """
    def snr(row: dict) -> float:
        return math.inf if row["snr_db"] is None else row["snr_db"]

    def drop(row: dict) -> float:
        return row[f"{metric}_drop"] or 0.0

    key = (lambda r: (snr(r), -drop(r))) if rank_by == "snr" else (lambda r: (-drop(r), snr(r)))
    return [{**row, "rank": i + 1} for i, row in enumerate(sorted(rows, key=key))]


def _one_layer(model, layer, total: int, config: SensitivityConfig, ref, batches) -> tuple[dict, float | None]:
    from ..pipeline.compress import OutputConfig, compress_model
    from .evaluate import compare
    from ..graph.layers import Selection
    from ..methods.opq import OpqConfig
    from ..runtime.sessions import session

    selection = Selection(include=(glob.escape(layer.name),), keep=(), min_params=config.min_params)
    out, report = compress_model(model, OpqConfig(prune=config.prune, bits=config.bits), selection,
                                 OutputConfig(format="float", check_runtime=False))
    stored = next(r for r in report["layers"] if r["name"] == layer.name)
    result = compare(ref, session(out, config.threads), batches)
    row = {"layer": layer.name, "op": layer.op, "params": int(layer.values.size),
           "share": layer.values.size / total, "prune_ratio": stored["prune_ratio"], "bits": stored["bits"],
           "snr_db": result.snr_db, "cosine": result.outputs[0]["cosine"], "agreement": result.agreement,
           "agreement_drop": None if result.agreement is None else 100.0 - result.agreement,
           "accuracy": result.accuracy,
           "accuracy_drop": None if result.accuracy is None else result.ref_accuracy - result.accuracy}
    return row, result.ref_accuracy


def measure_sensitivity(src: str | os.PathLike, data: str | os.PathLike,
                        config: SensitivityConfig = SensitivityConfig(), progress=None) -> dict:
    """Compress each layer of SRC alone and measure it against SRC on `data`; the ranked rows."""
    from ..pipeline.compress import find_model_layers
    from ..graph.io import check_model_valid, load_model
    from ..graph.layers import Selection
    from ..runtime.data import open_batches
    from ..runtime.sessions import open_session

    ref = open_session(src, config.threads)
    model = load_model(src)
    check_model_valid(model, src)
    batches = open_batches(data, ref, config.batch, config.labels_key)
    layers, _ = find_model_layers(model, Selection(keep=(), min_params=config.min_params))
    total = sum(layer.values.size for layer in layers)
    rows, ref_accuracy = [], None
    for layer in (progress(layers, len(layers)) if progress else layers):
        row, ref_accuracy = _one_layer(model, layer, total, config, ref, batches)
        rows.append(row)
    metric = "accuracy" if ref_accuracy is not None else "agreement"
    return {"source": str(src), "data": str(data), "settings": {"prune": config.prune, "bits": config.bits},
            "metric": metric, "rank_by": config.rank_by,
            "reference": {"accuracy": ref_accuracy, "agreement": 100.0}, "config": asdict(config),
            "layers": rank_layers(rows, config.rank_by, metric)}


def print_sensitivity(result: dict, console) -> None:
    from rich.table import Table

    metric, s = result["metric"], result["settings"]
    table = Table(title=f"onnxjpq sensitivity: {result['source']}, each layer alone at --prune {s['prune']:g} "
                        f"--bits {s['bits']:g}", header_style="bold")
    for col in ("rank", "layer", "op", "params", "pruned", "bits", "SNR dB", "agreement", metric + " drop"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in result["layers"]:
        snr = "inf" if r["snr_db"] is None else f"{r['snr_db']:.2f}"
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2f} %"
        drop = "-" if r[f"{metric}_drop"] is None else f"{r[f'{metric}_drop']:+.2f}"
        table.add_row(str(r["rank"]), r["layer"], r["op"], f"{r['params']:,}", f"{r['prune_ratio']:.1%}",
                      f"{r['bits']:.2f}", snr, agree, drop)
    console.print(table)
    if result["reference"]["accuracy"] is not None:
        console.print(f"fp32 accuracy {result['reference']['accuracy']:.2f} %; layers ranked most harmful "
                      f"first by {'output SNR' if result['rank_by'] == 'snr' else metric + ' drop'}")
