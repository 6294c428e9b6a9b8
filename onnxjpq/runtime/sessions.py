"""onnxruntime sessions: opening models, running them on datasets, accuracy, latency."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import DataError, ModelError

if TYPE_CHECKING:
    from .data import Dataset


_STATE = ort.capi.onnxruntime_pybind11_state
# what onnxruntime raises for a model it cannot load or run on the given inputs
ORT_ERRORS = (_STATE.Fail, _STATE.InvalidGraph, _STATE.NotImplemented, _STATE.InvalidArgument,
              _STATE.RuntimeException, _STATE.InvalidProtobuf, _STATE.NoSuchFile)


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def bounded_threads(threads: int) -> int:
    """An intra-op thread count of at most the usable cores (more only contend: 1024 threads
    on a few cores run for hours); 0 stays onnxruntime's own default."""
    return min(threads, cpu_cores())


# float activations for MatMulNBits, and no fusion of QDQ pairs into integer kernels
EXACT = {"session.qdq_matmulnbits_accuracy_level": "1", "session.disable_quant_qdq": "1"}


def session(model: str | os.PathLike | bytes | onnx.ModelProto, threads: int = 0,
            exact: bool = False) -> ort.InferenceSession:
    """A CPU session; `threads` intra-op threads (0: onnxruntime's default), capped at the cores.

    `exact`: onnxruntime fuses a 4-bit DequantizeLinear feeding MatMul or Gemm into MatMulNBits
    and by default computes it with int8-quantized activations (accuracy level 4; 1.9e-3 on
    PP-OCR's direction-classifier probabilities); `exact` asks for float activations, so a
    check of what the file holds is not blurred by that choice of the runtime. Nor does it fuse
    DequantizeLinear → Conv → QuantizeLinear into QLinearConv: on x86 without VNNI that multiplies
    uint8 by int8 with 16-bit saturation (2.3 on the logits of lenet5 with DJPQ's 8-bit inputs)."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the caller as exceptions; no C++ log line beside them
    options.intra_op_num_threads = bounded_threads(threads)
    for key, value in (EXACT.items() if exact else ()):
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, data: Dataset, batch: int = 256, output: int = 0) -> np.ndarray:
    """One output of the model over the whole dataset, run in batches (of the model's size, if it fixes one)."""
    fixed = fixed_batch(sess)
    if fixed and len(data) % fixed:
        raise DataError(f"{len(data)} samples do not split into the model's fixed batch size {fixed}")
    batch = fixed or batch
    outs = []
    for start in range(0, len(data), batch):
        feed = {k: v[start:start + batch] for k, v in data.inputs.items()}
        outs.append(sess.run(None, feed)[output])
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean() * 100)


def open_session(path: str | os.PathLike | onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """A session on an ONNX file or loaded model, refusing unreadable files and models
    onnxruntime rejects as ModelError."""
    from ..graph.io import load_model

    if not isinstance(path, onnx.ModelProto):
        load_model(path)  # a clear error for a missing, truncated or non-ONNX file
    try:
        return session(path, threads)
    except ORT_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        name = "the model" if isinstance(path, onnx.ModelProto) else path
        raise ModelError(f"{name}: onnxruntime cannot load it ({first})") from None


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size the model's inputs fix on axis 0, or None when it is free."""
    fixed = {arg.shape[0] for arg in sess.get_inputs()
             if isinstance(arg.shape, list) and arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0}
    if len(fixed) > 1:
        raise ModelError(f"the model's inputs fix different batch sizes on axis 0: {sorted(fixed)}")
    return fixed.pop() if fixed else None


def run_samples(sess: ort.InferenceSession, inputs: dict[str, np.ndarray], samples: int,
                extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """All outputs for the first `samples` inputs (fewer when the model fixes its batch size:
    whole batches only), outputs of several batches concatenated on axis 0. `extra` feeds
    unbatched inputs (a weight being probed)."""
    n = min(samples, len(next(iter(inputs.values()))))
    fixed = fixed_batch(sess)
    if not fixed:
        return sess.run(None, {**{k: v[:n] for k, v in inputs.items()}, **(extra or {})})
    if n < fixed:
        raise DataError(f"the model takes batches of {fixed} samples; the data has {n}")
    runs = [sess.run(None, {**{k: v[i:i + fixed] for k, v in inputs.items()}, **(extra or {})})
            for i in range(0, n - n % fixed, fixed)]
    return [np.concatenate([np.atleast_1d(r[j]) for r in runs]) for j in range(len(runs[0]))]


def median_latency_ms(sessions: Sequence[ort.InferenceSession], feed: dict[str, np.ndarray], runs: int,
                      warmup: int) -> list[float]:
    """Median milliseconds of one run of `feed` on each session.

    The sessions take turns run by run, so drift in the machine's speed
    (clock, other load) falls on all of them alike.
    """
    for _ in range(warmup):
        for sess in sessions:
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for sess, spent in zip(sessions, times):
            start = time.perf_counter()
            sess.run(None, feed)
            spent.append(time.perf_counter() - start)
    return [float(np.median(spent)) * 1e3 for spent in times]
