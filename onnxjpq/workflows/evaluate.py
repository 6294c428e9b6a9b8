"""Comparing a compressed model with its reference: output error, agreement, accuracy, latency, size.

Metrics (pure numpy, accumulated batch by batch so memory stays bounded):

    agreement  = % of positions where argmax over the last axis of output 0 is the same
    accuracy   = % of positions where that argmax equals the label
    snr_db     = 10·log10(Σ ref² / Σ (ref − cand)²)        (inf when the outputs are equal)
    cosine     = mean over samples of cos(ref_i, cand_i), each output flattened per sample
    max_abs    = max |ref − cand|

The headline is the fidelity measure that fits output 0 (`workflows.fidelity`:
accuracy or top-1 agreement for class scores, cosine for embeddings and
feature maps, SNR for regressions), as points out of 100.

`evaluate_files` runs both models in onnxruntime on the same batches, times
one batch on each (median of interleaved runs at a stated intra-op thread
count), and reads the file sizes and the compression totals that
`onnxjpq compress` stores in the candidate's metadata (`onnxjpq.totals`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import DataError, ModelError, OptionError, ValidationError
from ..graph.io import file_bytes
from ..pipeline.report import size_change
from .fidelity import Metric, choose_metric, describe, points


# ---------------------------------------------------------------- pure metrics


def top1(output: np.ndarray) -> np.ndarray:
    """Predicted classes: the argmax over the last axis.

    >>> top1(np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5]]))
    array([1, 0])
    """
    return np.asarray(output).argmax(axis=-1)


def agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Percent of positions where `cand`'s top-1 class is `ref`'s.

    >>> agreement(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.9, 0.1], [0.6, 0.4]]))
    50.0
    """
    return float((top1(ref) == top1(cand)).mean() * 100)


def top1_accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Percent of positions whose top-1 class is the label.

    >>> top1_accuracy(np.array([[0.2, 0.8], [0.7, 0.3], [0.1, 0.9], [0.0, 1.0]]), np.array([1, 1, 1, 0]))
    50.0
    """
    predicted = top1(output)
    return float((predicted == _labels_like(labels, predicted)).mean() * 100)


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-noise ratio of `cand` against `ref` in dB: 10·log10(Σ ref² / Σ (ref − cand)²).

    >>> snr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5]))  # 25 / 0.25
    20.0
    >>> snr_db(np.ones(3), np.ones(3))
    inf
    """
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    return snr_from_energy(float((ref**2).sum()), float(((ref - cand) ** 2).sum()))


def snr_from_energy(signal: float, noise: float) -> float:
    """10·log10(signal / noise); inf without noise, -inf with noise and no signal."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def row_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """cos(ref_i, cand_i) of each sample i, the outputs flattened per sample (axis 0 = samples).

    Two zero rows count as identical (1), one zero row as unrelated (0).

    >>> row_cosines(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 0.0]]))
    array([1., 1.])
    """
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    cand = np.asarray(cand, np.float64).reshape(len(cand), -1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = ~ref.any(axis=1) & ~cand.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (ref * cand).sum(axis=1) / norms
    return np.where(both_zero, 1.0, np.where(norms > 0, cos, 0.0))


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean over samples (axis 0) of the cosine similarity of the flattened outputs.

    >>> round(cosine(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 1.0], [2.0, 2.0]])), 12)
    0.5
    """
    return float(row_cosines(ref, cand).mean())


def max_abs(ref: np.ndarray, cand: np.ndarray) -> float:
    """Largest absolute difference.

    >>> max_abs(np.array([1.0, -2.0]), np.array([1.5, -4.0]))
    2.0
    """
    diff = np.abs(np.asarray(ref, np.float64) - np.asarray(cand, np.float64))
    return float(diff.max(initial=0.0))


def _labels_like(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size != predicted.size:
        raise DataError(f"labels of shape {list(labels.shape)} do not match the predictions of output 0 "
                        f"(argmax over its last axis: shape {list(predicted.shape)})")
    return labels.reshape(predicted.shape)


# ---------------------------------------------------------------- accumulation


@dataclass(frozen=True)
class ErrorSums:
    """Running sums of one output's error over batches (the metrics above, streamed)."""

    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    rows: int = 0
    max_abs: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> ErrorSums:
        ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        return ErrorSums(self.signal + float((ref**2).sum()), self.noise + float(((ref - cand) ** 2).sum()),
                         self.cosine_sum + float(row_cosines(ref, cand).sum()), self.rows + len(ref),
                         max(self.max_abs, max_abs(ref, cand)))

    def metrics(self) -> dict:
        return {"snr_db": snr_from_energy(self.signal, self.noise),
                "cosine": self.cosine_sum / self.rows if self.rows else math.nan, "max_abs": self.max_abs}


@dataclass(frozen=True)
class Tally:
    """Running counts of top-1 agreement and (with labels) correct predictions."""

    positions: int = 0
    agree: int = 0
    labelled: int = 0
    ref_correct: int = 0
    cand_correct: int = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> Tally:
        pr, pc = top1(ref), top1(cand)
        right = (0, 0, 0) if labels is None else (
            pr.size, int((pr == _labels_like(labels, pr)).sum()), int((pc == _labels_like(labels, pc)).sum()))
        return Tally(self.positions + pr.size, self.agree + int((pr == pc).sum()), self.labelled + right[0],
                     self.ref_correct + right[1], self.cand_correct + right[2])

    def metrics(self) -> dict:
        def pct(n: int, d: int) -> float | None:
            return 100 * n / d if d else None
        return {"agreement": pct(self.agree, self.positions), "ref_accuracy": pct(self.ref_correct, self.labelled),
                "accuracy": pct(self.cand_correct, self.labelled)}


@dataclass(frozen=True)
class Comparison:
    """What comparing two models on the same batches measured."""

    samples: int
    labelled: bool
    agreement: float | None
    ref_accuracy: float | None
    accuracy: float | None
    outputs: list[dict] = field(default_factory=list)  # name, shape, snr_db, cosine, max_abs

    @property
    def snr_db(self) -> float:
        return self.outputs[0]["snr_db"]


def compare(ref_sess, cand_sess, batches, progress=None) -> Comparison:
    """Run both sessions on every batch and accumulate the error of each output and the top-1 tallies."""
    names = _matched_outputs(ref_sess, cand_sess)
    sums, tally, samples, shapes = [ErrorSums() for _ in names], Tally(), 0, {}
    for feed, labels in (progress(batches, batches.count) if progress else batches):
        ref, cand = ref_sess.run(None, feed), cand_sess.run(None, feed)
        for i, name in enumerate(names):
            if ref[i].shape != cand[i].shape:
                raise ModelError(f"output {name!r} has shape {list(ref[i].shape)} in the reference and "
                                 f"{list(cand[i].shape)} in the candidate")
            sums[i] = sums[i].add(ref[i], cand[i])
            shapes[name] = list(ref[i].shape[1:])
        if ref[0].ndim >= 2 and ref[0].shape[-1]:  # a (non-empty) class axis to take the argmax over
            tally = tally.add(ref[0], cand[0], labels)
        samples += len(next(iter(feed.values())))
    outputs = [{"name": name, "shape": ["N", *shapes[name]], **s.metrics()} for name, s in zip(names, sums)]
    return Comparison(samples, tally.labelled > 0, **tally.metrics(), outputs=outputs)


def _matched_outputs(ref_sess, cand_sess) -> list[str]:
    ref = [o.name for o in ref_sess.get_outputs()]
    cand = [o.name for o in cand_sess.get_outputs()]
    if len(ref) != len(cand):
        raise ModelError(f"the reference has {len(ref)} outputs ({', '.join(ref)}) and the candidate "
                         f"{len(cand)} ({', '.join(cand)})")
    return ref


# ---------------------------------------------------------------- the eval command's work


@dataclass(frozen=True)
class EvalConfig:
    """batch: samples per run; threads: onnxruntime intra-op threads (0 = its default);
    runs/warmup: timed and untimed runs of one batch per model (runs 0: no timing)."""

    batch: int = 64
    threads: int = 1
    runs: int = 50
    warmup: int = 5
    labels_key: str = "labels"
    metric: str = "auto"  # or a workflows.fidelity.METRICS name

    def __post_init__(self):
        for name, low in (("batch", 1), ("threads", 0), ("runs", 0), ("warmup", 0)):
            if getattr(self, name) < low:
                raise OptionError(f"--{name} must be >= {low}, got {getattr(self, name)}")


def stored_totals(path: str | os.PathLike) -> dict | None:
    """The compression totals `onnxjpq compress` stored in the model's metadata, if any."""
    model = onnx.load_model(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(props["onnxjpq.totals"])
    except (KeyError, json.JSONDecodeError):
        return None


def _signature(sess) -> dict[str, str]:
    return {i.name: f"{i.name} [{', '.join(str(d) for d in (i.shape if isinstance(i.shape, list) else []))}] "
                    f"{i.type}" for i in sess.get_inputs()}


def check_same_inputs(ref_sess, cand_sess, ref_path, cand_path) -> None:
    """Refuse two models whose inputs differ in names, element types, ranks or fixed sizes."""
    ref, cand = ({i.name: i for i in s.get_inputs()} for s in (ref_sess, cand_sess))

    def clash(a, b) -> bool:
        if a.type != b.type or not isinstance(a.shape, list) or not isinstance(b.shape, list):
            return a.type != b.type
        return len(a.shape) != len(b.shape) or any(
            isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0 and x != y for x, y in zip(a.shape, b.shape))

    if sorted(ref) != sorted(cand) or any(clash(ref[n], cand[n]) for n in ref):
        show = [", ".join(_signature(s).values()) for s in (ref_sess, cand_sess)]
        raise ModelError(f"the models take different inputs: {ref_path} takes {show[0]}; {cand_path} takes "
                         f"{show[1]}; compare a model with its own compressed version")


def fidelity(result: Comparison, metric: Metric) -> dict:
    """The chosen measure for output 0 as points (reference and candidate) and the points lost."""
    measured = {"accuracy": result.accuracy, "agreement": result.agreement,
                "cosine": result.outputs[0]["cosine"], "snr_db": result.snr_db}
    cand = points(metric.name, **measured)
    ref = result.ref_accuracy if metric.name == "accuracy" else 100.0
    return {"metric": metric.name, "reason": metric.reason, "unit": describe(metric.name),
            "reference": ref, "candidate": cand, "drop": ref - cand}


def evaluate_files(ref_path, cand_path, data: str | os.PathLike, config: EvalConfig = EvalConfig(),
                   progress=None) -> dict:
    """Compare CAND with REF on `data` (an .npz or a `module:function`); the figures as a dict."""
    from ..runtime.data import open_batches
    from ..runtime.sessions import median_latency_ms, open_session

    ref_sess, cand_sess = open_session(ref_path, config.threads), open_session(cand_path, config.threads)
    check_same_inputs(ref_sess, cand_sess, ref_path, cand_path)
    batches = open_batches(data, ref_sess, config.batch, config.labels_key)
    result = compare(ref_sess, cand_sess, batches, progress)
    first = result.outputs[0]
    metric = choose_metric(first["name"], first["shape"][1:], result.labelled,
                           onnx.load_model(str(ref_path), load_external_data=False), config.metric)
    latency, timed_batch = [None, None], None
    if config.runs:
        feed, _ = next(iter(batches))
        latency = median_latency_ms([ref_sess, cand_sess], feed, config.runs, config.warmup)
        timed_batch = len(next(iter(feed.values())))
    bytes_ref, bytes_cand = file_bytes(ref_path), file_bytes(cand_path)
    metrics = {"accuracy": result.accuracy, "ref_accuracy": result.ref_accuracy,
               "accuracy_drop": None if result.accuracy is None else result.ref_accuracy - result.accuracy,
               "agreement": result.agreement, "snr_db": result.snr_db, "cosine": result.outputs[0]["cosine"],
               "max_abs": result.outputs[0]["max_abs"], "latency_ms": latency[1], "ref_latency_ms": latency[0],
               "latency_ratio": latency[1] / latency[0] if latency[0] else None}
    return {"ref": str(ref_path), "cand": str(cand_path), "data": str(data), "samples": result.samples,
            "labelled": result.labelled, "labels": batches.info.get("labels_key"),
            "fidelity": fidelity(result, metric), "threads": config.threads, "batch": config.batch,
            "timing": {"runs": config.runs, "warmup": config.warmup, "batch": timed_batch},
            "metrics": metrics, "outputs": result.outputs,
            "sizes": {"bytes_ref": bytes_ref, "bytes_cand": bytes_cand, "size_ratio": bytes_ref / bytes_cand},
            "totals": stored_totals(cand_path), "config": asdict(config)}


def check_drop(result: dict, max_drop: float) -> None:
    """Raise ValidationError when the candidate loses more than `max_drop` points of the fidelity
    measure (top-1 accuracy, agreement, cosine or output energy; see `workflows.fidelity`)."""
    found = result["fidelity"]
    if not found["drop"] <= max_drop:
        raise ValidationError(f"{result['cand']} loses {found['drop']:.2f} {found['unit']} on {result['data']}, "
                              f"more than --max-drop {max_drop:g}")


def to_json(result: dict) -> str:
    """JSON with infinite or undefined figures (identical outputs: SNR inf) written as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(result), indent=2) + "\n"


# ---------------------------------------------------------------- printing


def _points(drop: float) -> str:
    """Points lost, never '-0.00'."""
    text = f"{drop:.2f}"
    return ("0.00" if text == "-0.00" else text) + " points"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_evaluation(result: dict, console) -> None:
    """Two rich tables: the models side by side, then the error of each output."""
    from rich.table import Table

    m, s, t = result["metrics"], result["sizes"], result["timing"]
    table = Table(title=f"onnxjpq eval: {result['samples']:,} samples from {result['data']}", header_style="bold")
    for col in ("", "reference", "candidate", "candidate / reference"):
        table.add_column(col, justify="left" if not col else "right")
    fid = result["fidelity"]
    if result["labelled"] and fid["metric"] in ("accuracy", "agreement"):
        table.add_row("top-1 accuracy", _pct(m["ref_accuracy"]), _pct(m["accuracy"]),
                      f"{-m['accuracy_drop']:+.2f} points")
    if m["latency_ms"] is not None:
        table.add_row(f"latency, batch {t['batch']}, {result['threads'] or 'default'} thread(s), "
                      f"median of {t['runs']}", f"{m['ref_latency_ms']:.3f} ms", f"{m['latency_ms']:.3f} ms",
                      f"{m['latency_ratio']:.2f}x")
    table.add_row("file size", f"{s['bytes_ref']:,} B", f"{s['bytes_cand']:,} B",
                  f"{1 / s['size_ratio']:.3f}x ({size_change(s['size_ratio'])})")
    console.print(table)
    outputs = Table(title="candidate against reference, per output", header_style="bold")
    for col in ("output", "shape", "SNR dB", "cosine", "max |error|"):
        outputs.add_column(col, justify="left" if col in ("output", "shape") else "right")
    for o in result["outputs"]:
        outputs.add_row(o["name"], "x".join(map(str, o["shape"])), _fmt(o["snr_db"], ".2f"),
                        _fmt(o["cosine"], ".6f"), _fmt(o["max_abs"], ".4g"))
    console.print(outputs)
    if m["agreement"] is not None and fid["metric"] in ("accuracy", "agreement"):
        console.print(f"top-1 agreement with the reference: {m['agreement']:.2f} %")
    console.print(f"fidelity by {fid['metric']} ({fid['reason']}; --metric chooses another): "
                  f"{fid['candidate']:.2f} points against the reference's {fid['reference']:.2f}, "
                  f"{_points(fid['drop'])} lost")
    if result["labels"]:
        console.print(f"labels: the array {result['labels']!r} of {result['data']} (--labels chooses another)")
    totals = result["totals"] or {}
    if all(k in totals for k in ("prune_ratio", "avg_bits", "rate", "storage_rate")):
        console.print(f"stored compression totals: pruned {totals['prune_ratio']:.2%}  avg bits "
                      f"{totals['avg_bits']:.2f}  rate {totals['rate']:.1f}x  storage rate "
                      f"{totals['storage_rate']:.1f}x")
