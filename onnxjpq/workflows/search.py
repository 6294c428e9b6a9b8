"""Accuracy-aware search: the highest storage rate whose measured drop stays within a limit.

The drop is measured with onnxruntime on the user's data, in points of the
fidelity measure that fits output 0 (`workflows.fidelity`): top-1 accuracy
when the data has labels and the output is class scores, top-1 agreement with
the fp32 model without labels, 100 x mean cosine for embeddings and feature
maps, output-energy points (SNR) for one value per sample; `metric` overrides
the choice. The rate is searched geometrically upwards from a safe start
until a point fails, then bisected between the last pass and the first
failure; every evaluation is recorded in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ..pipeline.compress import OutputConfig, compress_model
from ..errors import OptionError, ValidationError
from ..graph.layers import Selection
from ..methods.annc import AnncConfig
from ..runtime.data import Dataset
from ..runtime.sessions import accuracy, predict, session
from .evaluate import agreement, cosine, snr_db
from .fidelity import choose_metric, describe, points


@dataclass(frozen=True)
class SearchConfig:
    """Find the highest rate losing at most `max_drop` points on the data in `data_path`.

    `budget` carries every other budget option (bits bounds, objective, granularity);
    the search only changes its rate."""

    max_drop: float  # points of the fidelity measure (see workflows.fidelity)
    data_path: str = ""
    start_rate: float = 4.0
    max_rate: float = 512.0
    bisections: int = 5
    budget: AnncConfig = field(default_factory=lambda: AnncConfig(rate=4.0))
    metric: str = "auto"  # or a workflows.fidelity.METRICS name

    def __post_init__(self):
        if not self.max_drop >= 0:
            raise OptionError(f"max drop must be >= 0 points, got {self.max_drop}")
        if not 1 < self.start_rate < self.max_rate:
            raise OptionError("search rates must satisfy 1 < start < max")


def _score(metric: str, output: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    """Points out of 100 of `output` against the fp32 `reference` (accuracy: against the labels)."""
    if metric == "accuracy":
        return accuracy(output, labels)
    if metric == "agreement":
        return agreement(reference, output)  # per position: a sequence's [T, C] is T decisions
    if metric == "cosine":
        return points("cosine", cosine=cosine(reference, output))
    return points("snr", snr_db=snr_db(reference, output))


def search_rate(model: onnx.ModelProto, search: SearchConfig, data: Dataset,
                selection: Selection = Selection(), output: OutputConfig = OutputConfig(),
                progress=None, compress=None) -> tuple[onnx.ModelProto, dict]:
    """Compress at the highest rate whose measured drop is within `search.max_drop`; `compress`
    (model, config, selection, output) -> (model, report) replaces the data-free solve."""
    ref_logits = predict(session(model), data)
    metric = choose_metric(model.graph.output[0].name, list(ref_logits.shape[1:]), data.labels is not None, model,
                           search.metric)
    ref_score = _score(metric.name, ref_logits, ref_logits, data.labels)
    evaluations, best = [], None

    def evaluate(rate: float) -> bool:
        nonlocal best
        config = replace(search.budget, rate=rate, size_kb=None)
        try:
            out, report = (compress or compress_model)(model, config, selection, output)
        except OptionError:  # the budget is out of reach: as good as a failure
            evaluations.append({"rate": rate, "feasible": False, "ok": False})
            return False
        drop = ref_score - _score(metric.name, predict(session(out), data), ref_logits, data.labels)
        ok = drop <= search.max_drop
        evaluations.append({"rate": rate, "storage_rate": report["totals"]["storage_rate"],
                            "score": ref_score - drop, "drop": drop, "ok": ok})
        if progress:
            progress(evaluations[-1])
        if ok and (best is None or rate > best[0]):
            best = (rate, out, report)
        return ok

    lo, hi = search.start_rate, None
    if not evaluate(lo):
        raise ValidationError(f"even rate {lo:g}x loses more than {search.max_drop:g} {describe(metric.name)} "
                              f"({evaluations[-1].get('drop', float('nan')):.2f}; {metric.reason}); "
                              "use --prune/--bits")
    while hi is None and lo < search.max_rate:
        nxt = min(lo * 2, search.max_rate)
        if evaluate(nxt):
            lo = nxt
        else:
            hi = nxt
    for _ in range(search.bisections if hi else 0):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if evaluate(mid) else (lo, mid)
    rate, out, report = best
    report["search"] = {"max_drop": search.max_drop, "reference_score": ref_score,
                        "metric": metric.name, "metric_reason": metric.reason, "unit": describe(metric.name),
                        "labels": data.labels_key if data.labels is not None else None,
                        "chosen_rate": rate, "evaluations": evaluations}
    return out, report
