"""Benchmark onnxjpq against onnxruntime's quantizers and a naive two-stage baseline.

    python tools/benchmark.py [--quick] [--models lenet5,lenet300,minilm,silero] [--out docs/benchmarks.md]

Models: the bundled digits LeNets (labelled test splits: top-1 accuracy) and
all-MiniLM-L6-v2 from `onnxjpq.zoo.minilm` (held-out sentences: mean cosine
of the sentence embeddings with the fp32 model's), and silero-vad's six exports
(speech decisions on synthetic speech, see tools/real_models.py). Methods: fp32;
onnxruntime `quantize_dynamic` (int8); `quantize_static` (QDQ int8,
per-channel weights, MinMax calibration on the training/calibration split);
onnxruntime's `MatMulNBitsQuantizer` (4 bits, block 32, MatMul weights only);
"naive prune+quant" (global magnitude pruning, then per-channel symmetric
int8/int4 rounding, written back as float); onnxjpq (`compress_file` with
`OpqConfig` at several settings, and the budget mode `AnncConfig`, calibrated
on the calibration sentences for MiniLM). A last section fine-tunes lenet5
(masked retraining and ADMM, `onnxjpq.finetune`) unless `--no-finetune`.

Rates count the weights of the Conv/Gemm/MatMul layers onnxjpq finds (the
same set for every method): rate = 32·N / Σ bits·nonzero. ORT int8 counts 8
bits per quantized weight, dense; MatMulNBits counts the bytes of its packed
weights, scales and zero points; weights a method leaves in float count 32.
Latency: median over many runs of one fixed batch, intra_op_num_threads=1,
all variants timed in turn (round robin) after a warm-up, as a ratio to fp32.
Everything written to the output file comes from the run that writes it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
)

from onnxjpq import OpqConfig, Selection, compress_file
from onnxjpq.methods.annc import AnncConfig
from onnxjpq.pipeline.compress import find_model_layers
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import accuracy, median_latency_ms, predict, session

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("lenet5", "lenet300", "minilm", "silero")


@dataclass(frozen=True)
class Case:
    """One model: how to score a session, calibration batches, the latency batch, the settings."""

    name: str
    title: str
    src: Path
    metric: str  # "accuracy" (percent) or "cosine"
    score: Callable[[ort.InferenceSession], float]
    calib: list[dict[str, np.ndarray]]
    latency_feed: dict[str, np.ndarray]
    latency_batch: str
    jpq: tuple[tuple[str, OpqConfig | AnncConfig, Selection, Path | None], ...]  # label, config, sel., calib
    naive: tuple[tuple[float, int], ...]
    static_ops: tuple[tuple[str, ...] | None, ...] = (None,)  # None: every op type ORT quantizes


@dataclass
class Row:
    method: str
    setting: str
    path: Path | None = None
    rate: float | None = None
    storage_rate: float | None = None
    compress_s: float | None = None
    note: str = ""
    score: float | None = None
    file_ratio: float | None = None
    latency_ratio: float | None = None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ cases


def _batches(inputs: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


def _jpq(settings, selection=Selection(), suffix="") -> tuple:
    return tuple((f"prune {p:g}, bits {b:g}{suffix}", OpqConfig(prune=p, bits=b), selection, None)
                 for p, b in settings)


def _budget(rates, calib: Path | None = None) -> tuple:
    label = ", calibrated" if calib else ""
    return tuple((f"rate {r:g}{label}", AnncConfig(rate=r), Selection(), calib) for r in rates)


def lenet_case(name: str, quick: bool) -> Case:
    src = ROOT / "models" / f"{name}.onnx"
    test = load_dataset(ROOT / "models" / f"{name}_test.npz", session(src))
    train = load_dataset(ROOT / "models" / f"{name}_train.npz", session(src))
    jpq = ((0, 8), (0.5, 4), (0.8, 4)) if quick else ((0, 8), (0, 4), (0.5, 4), (0.7, 4), (0.8, 4), (0.9, 3))
    naive = ((0, 8), (0.5, 4), (0.8, 4)) if quick else ((0, 8), (0, 4), (0.5, 4), (0.7, 4), (0.8, 4), (0.9, 4))
    settings = _jpq(jpq)
    if name == "lenet300":  # in a 3-layer MLP the default keep of first/last layers matters most
        unkept = ((0.8, 4),) if quick else ((0.5, 4), (0.7, 4), (0.8, 4), (0.9, 3))
        settings += _jpq(unkept, Selection(keep=()), ", keep none")
    settings += _budget((16,) if quick else (12, 16, 24))
    return Case(name, f"{name} (digits, {len(test)} test images)", src, "accuracy",
                lambda sess: accuracy(predict(sess, test), test.labels),
                _batches(train.inputs, 64), test.inputs, f"the {len(test)} test images in one batch",
                settings, naive)


def minilm_case(work: Path, quick: bool) -> Case:
    from onnxjpq.zoo import minilm

    src = minilm.export_minilm(work / "minilm.onnx")
    heldout = minilm.encode_sentences(minilm.heldout_sentences())
    reference = session(src).run(None, heldout)[0]

    def cosine(sess: ort.InferenceSession) -> float:
        out = sess.run(None, heldout)[0]
        return float(((out * reference).sum(1) / np.linalg.norm(out, axis=1)).mean())

    sentences = minilm.calibration_sentences()
    calib = [minilm.encode_sentences(sentences[i:i + 16]) for i in range(0, len(sentences), 16)]
    jpq = _jpq(((0, 8), (0, 4)) if quick else ((0, 8), (0, 6), (0.3, 6), (0, 4)))
    calib_npz = minilm.write_sentences_npz(work / "minilm_calib.npz", sentences)
    jpq += _budget((6,) if quick else (6, 8), calib_npz)
    latency = minilm.encode_sentences(minilm.heldout_sentences()[:16])
    return Case("minilm", f"all-MiniLM-L6-v2 ({len(reference)} held-out sentences)", src, "cosine",
                cosine, calib, latency, f"16 held-out sentences, padded to {latency['input_ids'].shape[1]} tokens",
                jpq, ((0, 8),) if quick else ((0, 8), (0.3, 8), (0, 4)), static_ops=(None, ("MatMul",)))


# ------------------------------------------------------------------ methods


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _int8_rate(path: Path, layers) -> float:
    """8 bits for each layer weight the quantizer stored as 8-bit integers, 32 for the others.

    A weight counts as quantized when an 8-bit initializer of its size is named after it
    (`W_quantized`, or `W_Transposed_quantized` where quantize_dynamic turned Gemm into MatMul).
    """
    eight = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    stored = [(t.name, int(np.prod(t.dims))) for t in onnx.load(str(path)).graph.initializer
              if t.data_type in eight]
    bits = sum(l.values.size * (8 if any(name.startswith(l.name) and size == l.values.size
                                         for name, size in stored) else 32) for l in layers)
    return 32 * sum(l.values.size for l in layers) / bits


def _nbits_rate(path: Path, layers) -> float:
    """Bytes of MatMulNBits' packed weights, scales and zero points; 32 bits for weights left float."""
    model = onnx.load(str(path))
    inits = _initializers(model)
    bits = sum(8 * numpy_helper.to_array(inits[name]).nbytes for node in model.graph.node
               if node.op_type == "MatMulNBits" for name in node.input[1:] if name in inits)
    bits += sum(32 * l.values.size for l in layers if l.name in inits)
    return 32 * sum(l.values.size for l in layers) / bits


class _Reader(CalibrationDataReader):
    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def run_dynamic(case: Case, work: Path, layers, per_channel: bool) -> Row:
    dst = work / f"{case.name}.dynamic_{'channel' if per_channel else 'tensor'}.onnx"
    seconds = _timed(lambda: quantize_dynamic(case.src, dst, per_channel=per_channel,
                                              weight_type=QuantType.QInt8))
    return Row("ORT quantize_dynamic", _dynamic_label(per_channel), dst, _int8_rate(dst, layers),
               compress_s=seconds)


def _dynamic_label(per_channel: bool) -> str:
    return f"int8 weights, per-{'channel' if per_channel else 'tensor'}"


def run_static(case: Case, work: Path, layers, ops: tuple[str, ...] | None) -> Row:
    dst = work / f"{case.name}.static_{'_'.join(ops or ('all',))}.onnx"
    seconds = _timed(lambda: quantize_static(
        case.src, dst, _Reader(case.calib), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(ops) if ops else None, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax))
    return Row("ORT quantize_static", _static_label(case, ops), dst, _int8_rate(dst, layers), compress_s=seconds)


def _static_label(case: Case, ops: tuple[str, ...] | None) -> str:
    which = f"{'/'.join(ops)} only" if ops else "all op types"
    return f"QDQ int8 (u8 activations), per-channel, {which}, MinMax on {len(case.calib)} batches"


def run_nbits(case: Case, work: Path, layers) -> Row:
    if not any(l.op == "MatMul" for l in layers):
        ops = ", ".join(sorted({l.op for l in layers}))
        return Row("ORT MatMulNBits", "4 bits, block 32", note=f"n/a: no MatMul weight (layers are {ops})")
    dst = work / f"{case.name}.nbits.onnx"

    def quantize():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # needs onnx-ir

        quantizer = MatMulNBitsQuantizer(onnx.load(str(case.src)), bits=4, block_size=32)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)

    seconds = _timed(quantize)
    return Row("ORT MatMulNBits", "4 bits, block 32, asymmetric", dst, _nbits_rate(dst, layers),
               compress_s=seconds)


def naive_prune_quant(src: Path, dst: Path, layers, prune: float, bits: int) -> int:
    """Global magnitude pruning, then per-channel symmetric rounding; dequantized floats written back.

    Returns the number of nonzero weights after both stages.
    """
    model = onnx.load(str(src))
    inits = _initializers(model)
    magnitudes = np.sort(np.concatenate([np.abs(l.values).ravel() for l in layers]))
    n_pruned = int(round(prune * magnitudes.size))
    threshold = magnitudes[n_pruned - 1] if n_pruned else -1.0
    qmax, nonzero = 2 ** (bits - 1) - 1, 0
    for layer in layers:
        w = np.where(np.abs(layer.values) > threshold, layer.values, 0.0).astype(np.float32)
        reduce = tuple(a for a in range(w.ndim) if a != layer.axis)
        scale = np.abs(w).max(axis=reduce, keepdims=True) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        codes = np.clip(np.round(w / scale), -qmax, qmax)
        nonzero += int(np.count_nonzero(codes))
        inits[layer.name].CopyFrom(numpy_helper.from_array((codes * scale).astype(np.float32), layer.name))
    onnx.save(model, str(dst))
    return nonzero


def run_naive(case: Case, work: Path, layers, prune: float, bits: int) -> Row:
    dst = work / f"{case.name}.naive_p{prune:g}_b{bits}.onnx"
    start = time.perf_counter()
    nonzero = naive_prune_quant(case.src, dst, layers, prune, bits)
    seconds = time.perf_counter() - start
    params = sum(l.values.size for l in layers)
    return Row("naive prune+quant", f"prune {prune:g}, int{bits}", dst, 32 * params / (bits * nonzero),
               compress_s=seconds)


def run_onnxjpq(case: Case, work: Path, label: str, config: OpqConfig | AnncConfig, selection: Selection,
                calib: Path | None = None) -> Row:
    dst = work / f"{case.name}.onnxjpq_{re.sub('[^0-9a-z]+', '_', label)}.onnx"
    start = time.perf_counter()
    report = compress_file(case.src, dst, config, selection, calib=calib)
    seconds = time.perf_counter() - start
    totals = report["totals"]
    if isinstance(config, OpqConfig) and abs(totals["avg_bits"] - config.bits) > 0.05:
        label += f" (got {totals['avg_bits']:.2f} bits)"
    return Row("onnxjpq", label, dst, totals["rate"], totals["storage_rate"], seconds)


def _guarded(method: str, setting: str, fn) -> Row:
    try:
        return fn()
    except Exception as exc:  # a failing peer is a result, not a crash
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Row(method, setting, note=f"failed: {type(exc).__name__}: {first}")


# ------------------------------------------------------------------ measuring


def measure_latency(paths: list[Path], feed: dict[str, np.ndarray], runs: int, warmup: int) -> list[float]:
    """Median seconds per run of each model, timed in turn so that drift hits all alike."""
    sessions = [session(p, threads=1) for p in paths]
    return [ms / 1e3 for ms in median_latency_ms(sessions, feed, runs, warmup)]


def bench_case(case: Case, work: Path, runs: int) -> tuple[list[Row], float]:
    """All methods on one model; returns the rows and fp32's median latency (s)."""
    layers, _ = find_model_layers(onnx.load(str(case.src)))
    rows = [Row("fp32", "", case.src, 1.0, 1.0)]
    peers = [("ORT quantize_dynamic", _dynamic_label(pc), lambda pc=pc: run_dynamic(case, work, layers, pc))
             for pc in (False, True)]
    peers += [("ORT quantize_static", _static_label(case, ops), lambda ops=ops: run_static(case, work, layers, ops))
              for ops in case.static_ops]
    peers += [("ORT MatMulNBits", "4 bits, block 32", lambda: run_nbits(case, work, layers))]
    for method, setting, fn in peers:
        _log(f"  {case.name}: {method} {setting}")
        rows.append(_guarded(method, setting, fn))
    for prune, bits in case.naive:
        _log(f"  {case.name}: naive prune {prune:g} int{bits}")
        rows.append(_guarded("naive prune+quant", f"prune {prune:g}, int{bits}",
                             lambda: run_naive(case, work, layers, prune, bits)))
    for label, config, selection, calib in case.jpq:
        _log(f"  {case.name}: onnxjpq {label}")
        rows.append(_guarded("onnxjpq", label,
                             lambda: run_onnxjpq(case, work, label, config, selection, calib)))
    done = [r for r in rows if r.path is not None]
    fp32_bytes = case.src.stat().st_size
    for row in done:
        row.score = case.score(session(row.path))
        row.file_ratio = fp32_bytes / row.path.stat().st_size
    _log(f"  {case.name}: latency, {runs} rounds")
    latencies = measure_latency([r.path for r in done], case.latency_feed, runs, warmup=max(3, runs // 10))
    for row, seconds in zip(done, latencies):
        row.latency_ratio = seconds / latencies[0]
    return rows, latencies[0]


# ------------------------------------------------------------------ report


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _score(case: Case, value: float | None) -> str:
    return _fmt(value, ".2f", " %") if case.metric == "accuracy" else _fmt(value, ".4f")


def _within(case: Case, row: Row, fp32: float) -> bool:
    if row.score is None or row.rate is None:
        return False
    return row.score >= fp32 - 1.0 if case.metric == "accuracy" else row.score >= 0.99


def best_line(case: Case, rows: list[Row]) -> str:
    """The highest rate each method reaches within the tolerance."""
    fp32 = rows[0].score
    parts = []
    for method in dict.fromkeys(r.method for r in rows[1:]):
        mine = [r for r in rows if r.method == method]
        ok = [r for r in mine if _within(case, r, fp32)]
        if not any(r.path for r in mine):
            parts.append(f"{method}: {mine[0].note or 'no result'}")
        elif ok:
            best = max(ok, key=lambda r: r.rate)
            parts.append(f"{method}: **{best.rate:.1f}x** ({best.setting}, {_score(case, best.score)})")
        else:
            parts.append(f"{method}: none of its settings")
    tolerance = ("within 1 accuracy point of fp32" if case.metric == "accuracy"
                 else "at mean cosine ≥ 0.99")
    return f"Highest rate {tolerance}: " + "; ".join(parts) + "."


def case_markdown(case: Case, rows: list[Row], fp32_latency: float, runs: int) -> str:
    metric = "accuracy" if case.metric == "accuracy" else "cosine vs fp32"
    lines = [f"## {case.title}", "",
             f"fp32 latency {fp32_latency * 1e3:.2f} ms (median of {runs} runs, 1 thread, "
             f"{case.latency_batch}).", "",
             f"| method | setting | {metric} | rate | storage rate | file ratio | latency ratio | compress s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.path is None:
            lines.append(f"| {r.method} | {r.setting} | {r.note} | | | | | |")
            continue
        lines.append(f"| {r.method} | {r.setting} | {_score(case, r.score)} | {_fmt(r.rate, '.1f', 'x')} | "
                     f"{_fmt(r.storage_rate, '.1f', 'x')} | {_fmt(r.file_ratio, '.2f', 'x')} | "
                     f"{_fmt(r.latency_ratio, '.2f')} | {_fmt(r.compress_s, '.1f')} |")
    return "\n".join(lines + ["", best_line(case, rows), ""])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _onnxjpq_source() -> str:
    """onnxjpq's version, git commit, and whether onnxjpq/ differs from it."""
    from onnxjpq import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "onnxjpq")
    except (OSError, subprocess.CalledProcessError):
        return __version__
    return f"{__version__}, git {commit}" + (" with uncommitted changes in onnxjpq/" if dirty else "")


def machine_markdown() -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ["| | |", "| --- | --- |", f"| CPU | {_cpu_model()}, {cores} cores available |",
            f"| onnxjpq | {_onnxjpq_source()} |",
            f"| Python | {platform.python_version()} ({platform.system()} {platform.machine()}) |",
            f"| onnxruntime | {ort.__version__} |", f"| onnx | {onnx.__version__} |",
            f"| numpy | {np.__version__} |",
            f"| date | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC |"]


# tables other tools write beside this file, carried into it (each with its own command)
INCLUDED = ("benchmarks_data_aware.md", "benchmarks_calib_cost.md")


def included_sections(folder: Path) -> list[str]:
    """The INCLUDED tables found in `folder`, their headings one level down."""
    out = []
    for name in INCLUDED:
        if (folder / name).exists():
            text = (folder / name).read_text().strip()
            out.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
                       + f"\n\n(From docs/{name}.)\n")
    return out


def write_markdown(path: Path, command: str, sections: list[str], seconds: float, quick: bool) -> None:
    text = "\n".join([
        "# Benchmarks", "",
        "Generated by `tools/benchmark.py`; every figure below comes from the run that wrote this file.", "",
        "```bash", command, "```", "",
        *machine_markdown(), "",
        f"The whole run took {seconds:.0f} s{' (--quick)' if quick else ''}.", "",
        "Columns: *rate* = 32·N / Σ bits·nonzero over the N weights of the Conv/Gemm/MatMul layers "
        "(ORT int8: 8 bits per quantized weight, dense; MatMulNBits: its packed weights, scales and zero "
        "points; float weights 32 bits); *storage rate* = onnxjpq's count that also stores the sparsity "
        "pattern and steps; *file ratio* = fp32 file bytes / output file bytes; *latency ratio* = median "
        "latency / fp32's, same run, `intra_op_num_threads=1`; *compress s* = wall time of the "
        "compression call (calibration included). \"naive prune+quant\" is global magnitude pruning "
        "followed by per-channel symmetric rounding, stored as float. onnxjpq runs with its default "
        "output and selection (QDQ, int4 where the codes fit, `--keep auto`: first and last layer at 8 bits "
        "with --prune/--bits, none in the budget mode) unless the setting "
        "says otherwise; \"(got B bits)\" is the average packed width onnxjpq reached when it differs "
        "from the one asked.", "",
        *sections, *included_sections(path.parent)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------ fine-tuning


FINETUNE_RUNS = (  # (CLI flags, method, config factory, train config)
    ("--method masked --prune 0.9 --bits 3 --epochs 6 --lr 0.01", "masked",
     lambda: OpqConfig(prune=0.9, bits=3), dict(epochs=6, lr=0.01)),
    ("--method admm --rate 64 --epochs 15 --retrain-epochs 8 --lr 0.01", "admm",
     lambda: _admm(64, 15, 8), dict(lr=0.01)),
    ("--method djpq --rate 20 --epochs 20 --retrain-epochs 8", "djpq", lambda: _djpq(20, 20, 8), dict()),
)


def _djpq(rate: float, epochs: int, retrain: int):
    from onnxjpq.finetune.djpq import DjpqConfig
    return DjpqConfig(rate=rate, epochs=epochs, retrain_epochs=retrain)


def _admm(rate: float, epochs: int, retrain: int):
    from onnxjpq.finetune.admm import AdmmConfig
    return AdmmConfig(rate=rate, epochs=epochs, retrain_epochs=retrain)


def finetune_markdown() -> str:
    """lenet5 fine-tuned on its training split, evaluated on its test split."""
    from onnxjpq.finetune.run import finetune
    from onnxjpq.finetune.train import TrainConfig
    from onnxjpq.graph.io import load_model

    src = ROOT / "models" / "lenet5.onnx"
    model = load_model(src)
    train = load_dataset(ROOT / "models" / "lenet5_train.npz", session(src))
    test = load_dataset(ROOT / "models" / "lenet5_test.npz", session(src))
    fp32 = accuracy(predict(session(src), test), test.labels)
    lines = ["## Fine-tuning lenet5 (training split 1,347 images, test split 450)", "",
             f"fp32 accuracy {fp32:.2f} %. Each row is `onnxjpq finetune models/lenet5.onnx -o out.onnx "
             "--data models/lenet5_train.npz --val models/lenet5_test.npz` plus the flags shown.", "",
             "BOPs ratio counts the written codes (bits, and every zero: pruned weights and whole channels, "
             "in and out); DJPQ's channel-only ratio counts only whole pruned channels and the learned widths "
             "(`bops_ratio_learned` in the report).", "",
             "| flags | rate | storage rate | BOPs ratio | channel-only BOPs ratio | accuracy before retraining "
             "| accuracy after | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for flags, method, config, train_options in FINETUNE_RUNS:
        _log(f"  finetune: {flags}")
        start = time.perf_counter()
        out, report = finetune(model, config(), train, TrainConfig(**train_options), method, val=test)
        seconds = time.perf_counter() - start
        after = accuracy(predict(session(out), test), test.labels)
        t = report["totals"]
        learned = f"{t['bops_ratio_learned']:.1f}x" if "bops_ratio_learned" in t else "—"
        lines.append(f"| `{flags}` | {t['rate']:.1f}x | {t['storage_rate']:.1f}x | {t['bops_ratio']:.1f}x | {learned} | "
                     f"{report['finetune']['accuracy_before']:.2f} % | {after:.2f} % | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings and latency runs")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ",".join(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--work", type=Path, help="keep the compressed models here (default: a temp folder)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning section")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    logging.getLogger().setLevel(logging.ERROR)
    command = shlex.join(["python", "tools/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxjpq-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sections = []
        for name in names:
            _log(f"{name}: preparing")
            if name == "silero":  # every export silero-vad ships, by fidelity (tools/real_models.py)
                from real_models import silero_markdown
                sections.append(silero_markdown(work))
                continue
            case = minilm_case(work, args.quick) if name == "minilm" else lenet_case(name, args.quick)
            runs = (8 if args.quick else 80) if name == "minilm" else (30 if args.quick else 200)
            rows, fp32_latency = bench_case(case, work, runs)
            sections.append(case_markdown(case, rows, fp32_latency, runs))
            _log(sections[-1])
        if not args.no_finetune:
            sections.append(finetune_markdown())
    write_markdown(args.out, command, sections, time.perf_counter() - start, args.quick)
    _log(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
