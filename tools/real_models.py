"""Fidelity of compressed silero-vad models (real third-party ONNX files).

    python tools/real_models.py [--seconds 60]

Each of the exports silero-vad ships is compressed by onnxjpq at a few
settings and by onnxruntime's `quantize_dynamic` (int8, per channel), then
streamed over synthetic speech (`onnxjpq.zoo.silero.synthetic_speech`, three
clips) beside the original. Fidelity: the share of 32 ms chunks whose
speech/non-speech decision (p >= 0.5) agrees with the original's, and the mean
and largest gap in speech probability. The recurrent model is sensitive on
ambiguous stretches of the synthetic audio, so each model also gets a noise
floor (its weights rounded to fp16) and a reference (its weights rounded to
int8 per channel, as plain int8 quantizers do). `tools/benchmark.py`
includes this table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxjpq import OpqConfig, Selection, compress_file
from onnxjpq.graph.io import file_bytes, load_model, proto_graphs, save_model
from onnxjpq.methods.annc import AnncConfig
from onnxjpq.zoo import silero

SETTINGS = (
    ("defaults (8 bits)", OpqConfig()),
    ("--prune 0.3 --bits 6", OpqConfig(prune=0.3, bits=6)),
    ("--rate 8", AnncConfig(rate=8)),
)


def _rounded(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """A copy of the model with every float32 weight (subgraphs included) rounded: "fp16"
    (to float16 and back: a perturbation far below 8-bit quantization, the noise floor) or
    "int8" (symmetric per-output-channel int8 of tensors of rank 2 or more: plain int8 as
    other tools do it, the reference for onnxjpq's 8-bit default)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for graph in proto_graphs(out.graph):
        tensors = [*graph.initializer, *(n.attribute[0].t for n in graph.node if n.op_type == "Constant"
                                         and n.attribute and n.attribute[0].HasField("t"))]
        for tensor in tensors:
            values = numpy_helper.to_array(tensor)
            if values.dtype != np.float32 or values.size < 64 or (kind == "int8" and values.ndim < 2):
                continue
            if kind == "fp16":
                rounded = values.astype(np.float16).astype(np.float32)
            else:
                step = np.abs(values).max(axis=tuple(range(1, values.ndim)), keepdims=True) / 127
                rounded = (np.round(values / np.where(step > 0, step, 1)) * step).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _track(path: Path, clips: list[np.ndarray]) -> np.ndarray:
    session = _session(path)
    return np.concatenate([silero.speech_probabilities(session, clip) for clip in clips])


def _row(name: str, method: str, src: Path, out: Path, layers: str, reference: np.ndarray,
         clips: list[np.ndarray]) -> str:
    f = silero.fidelity(reference, _track(out, clips))
    return (f"| {name} | {method} | {layers} | {file_bytes(src) / file_bytes(out):.2f}x | "
            f"{100 * f['agreement']:.1f} % | {f['mean_abs_diff']:.3f} | {f['max_abs_diff']:.2f} |")


def silero_markdown(work: Path, seconds: float = 60) -> str:
    """The section for docs/benchmarks.md (empty when silero-vad is not installed)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [n for n in silero.MODEL_NAMES if silero.model_path(n) is not None]
    if not names:
        return ""
    clips = [silero.synthetic_speech(seconds / 3, seed) for seed in range(3)]
    lines = [f"## silero-vad ({len(names)} exports, {seconds:g} s of synthetic speech, "
             f"{sum(len(c) for c in clips) // silero.CHUNK} chunks)", "",
             "Command: `python tools/real_models.py`. Agreement: speech/non-speech decisions (p >= 0.5) "
             "equal to the original export's; |Δp|: gap in speech probability.", "",
             "| model | method | layers compressed | file ratio | agreement | mean abs Δp | max abs Δp |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        src = silero.model_path(name)
        reference = _track(src, clips)
        for kind, label in (("fp16", "weights rounded to fp16 (noise floor)"),
                            ("int8", "weights rounded to int8 per channel (reference, stored as float)")):
            rounded = work / f"{Path(name).stem}.{kind}.onnx"
            save_model(_rounded(load_model(src), kind), rounded)
            lines.append(_row(name, label, src, rounded, "all", reference, clips))
        for label, config in SETTINGS:
            out = work / f"{Path(name).stem}.{len(lines)}.onnx"
            report = compress_file(src, out, config, Selection())
            layers = f"{len(report['layers'])} ({len(report['skipped'])} skipped)"
            lines.append(_row(name, f"onnxjpq `{label}`", src, out, layers, reference, clips))
        out = work / f"{Path(name).stem}.ortdyn.onnx"
        try:
            quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
            lines.append(_row(name, "onnxruntime `quantize_dynamic` (int8, per channel)", src, out, "—",
                              reference, clips))
        except Exception as exc:  # onnxruntime's quantizer fails on some exports: say so in the table
            lines.append(f"| {name} | onnxruntime `quantize_dynamic` | — | — | fails: "
                         f"{str(exc).splitlines()[0][:60]} | — | — |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of synthetic speech")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="onnxjpq-real-") as tmp:
        print(silero_markdown(Path(tmp), args.seconds) or "silero-vad is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
