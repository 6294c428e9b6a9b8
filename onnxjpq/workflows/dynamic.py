"""Dynamic int8 activations for MatMul and Gemm (`--activations dynamic`).

onnxruntime's dynamic path quantizes each MatMul/Gemm input at run time
(DynamicQuantizeLinear, then MatMulInteger on int8 weights), so it needs no
calibration data and has no activation ranges to get wrong: it is the fast path
for transformers, whose activation outliers defeat static int8.

The weights are onnxjpq's: the weight compression is solved first (any method),
onnxruntime.quantization.quantize_dynamic writes the integer graph, and every
weight it quantized gets onnxjpq's codes and steps in place of its own rounding
(one step per output channel, zero point 0), so the file holds exactly the
values the report describes. Weights of other ops (Conv, ...) stay float.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, first_line
from ..graph.normalize import constants_as_initializers, sort_nodes
from ..runtime.data import Dataset
from ..runtime.sessions import ORT_ERRORS, session
from .activations import _named, _quiet, carry_model_info
from .against_fp32 import measure_against_fp32, measured_note

DYNAMIC_OPS = ("MatMul", "Gemm")


def _quantize_dynamic(model: onnx.ModelProto, tmp: Path, ops: tuple[str, ...], weights: set[str]) -> onnx.ModelProto:
    """onnxruntime's dynamic graph for the `ops` nodes that read one of `weights` (the others,
    e.g. a float16 MatMul onnxjpq left alone, stay as they are)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _named(model)
    others = [n.name for n in model.graph.node if n.op_type in ops and not weights & set(n.input)]
    src, dst = tmp / "float.onnx", tmp / "dynamic.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="float.onnx.data", size_threshold=1024)
    try:
        with _quiet():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(ops), nodes_to_exclude=others,
                             per_channel=True, weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # onnxruntime.quantization raises many types, with multi-line messages
        raise ModelError(f"onnxruntime's dynamic quantizer failed on this model: {first_line(exc)}") from exc
    qmodel = onnx.load(str(dst))
    sort_nodes(qmodel.graph)  # its quantizer can leave a node before the If whose output it reads
    try:
        session(qmodel)
    except ORT_ERRORS as exc:
        raise ModelError(f"onnxruntime's dynamic quantizer wrote a model onnxruntime rejects: {first_line(exc)}") \
            from exc
    return qmodel


def channel_codes(values: np.ndarray, steps) -> np.ndarray:
    """The integer codes of weights that are multiples of their steps."""
    return np.rint(values / steps).astype(np.int32)


def _ort_layout(codes: np.ndarray, steps, transposed: bool, shape: list[int],
                scale_dims: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Our codes and steps in the layout of onnxruntime's quantized weight (`shape`, channels on
    the last axis; a scale of `scale_dims`), or None where they do not fit it."""
    full = np.broadcast_to(np.asarray(steps, np.float32), codes.shape)
    if transposed:
        codes, full = codes.T, full.T
    if codes.ndim != 2 or list(codes.shape) != shape or not (full == full[:1]).all():
        return None  # not one step per output column
    scale = full[0]
    size = int(np.prod(scale_dims)) if scale_dims else 1
    if size != scale.size:
        if size != 1 or not (scale == scale[0]).all():
            return None
        scale = scale[:1]
    return codes.astype(np.int8), np.ascontiguousarray(scale).reshape(scale_dims)


def feed_codes(qmodel: onnx.ModelProto, layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Replace onnxruntime's rounding of each weight by onnxjpq's codes and steps; the names fed."""
    inits = {t.name: t for t in qmodel.graph.initializer}
    fed = []
    for name, (codes, steps) in layers.items():
        for prefix, transposed in ((name, False), (f"{name}_Transposed", True)):
            q, scale = inits.get(f"{prefix}_quantized"), inits.get(f"{prefix}_scale")
            if q is None or scale is None or q.data_type != onnx.TensorProto.INT8:
                continue
            ours = _ort_layout(codes, steps, transposed, list(q.dims), list(scale.dims))
            if ours is not None:
                q.CopyFrom(numpy_helper.from_array(ours[0], q.name))
                scale.CopyFrom(numpy_helper.from_array(ours[1], scale.name))
                fed.append(name)
            break
    return fed


def compress_dynamic(model: onnx.ModelProto, weights_config, selection, output, calib: Dataset | None = None,
                     progress=None) -> tuple[onnx.ModelProto, dict]:
    """Compress the weights (any method, 8 bits or fewer), then write onnxruntime's dynamic int8
    graph for MatMul and Gemm fed with those codes; with `calib`, measure it against fp32
    (`record_dynamic_measurement` adds a measurement taken elsewhere)."""
    from ..pipeline.compress import apply_plan, plan_model

    float_output = replace(output, format="float", int4=False)
    plan = plan_model(model, weights_config, selection, float_output)
    compressed, report = apply_plan(model, plan, selection, float_output,
                                    {"method": plan.method, "config": asdict(weights_config), "notes": []},
                                    progress)
    values = {t.name: t for t in compressed.graph.initializer}
    layers = {}
    for p in plan.layers:
        if p.name in values:
            w = numpy_helper.to_array(values[p.name])
            steps = np.asarray(p.steps_for(w.shape), np.float32)
            layers[p.name] = (channel_codes(w, steps), steps)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(compressed)
    constants_as_initializers(prepared)
    with tempfile.TemporaryDirectory(prefix="onnxjpq-dyn-") as tmp:
        ops = (*DYNAMIC_OPS, "Gather") if selection.embeddings else DYNAMIC_OPS
        qmodel = _quantize_dynamic(prepared, Path(tmp), ops, set(layers))
    fed = feed_codes(qmodel, layers)
    carry_model_info(qmodel, compressed)
    names = {t.name for t in qmodel.graph.initializer}
    requantized = sorted(n for n in set(layers) - set(fed)
                         if f"{n}_quantized" in names or f"{n}_Transposed_quantized" in names)
    kept_float = sorted(set(layers) - set(fed) - set(requantized))
    for row in report["layers"]:
        row["container"] = ("int8 (dynamic)" if row["name"] in fed else
                            "onnxruntime int8" if row["name"] in requantized else "float32")
    info = {"mode": "dynamic", "ops": list(ops), "int8_layers": len(fed), "requantized_layers": requantized,
            "float_layers": kept_float}
    notes = report["settings"]["notes"]
    if requantized:
        notes.append(f"{len(requantized)} weights (embedding tables read by Gather) are stored with onnxruntime's "
                     "own 8-bit rounding, one step per tensor, not onnxjpq's codes")
    if kept_float:
        notes.append(f"{len(kept_float)} compressed weights stay float32 (dequantized): dynamic int8 covers "
                     f"{' and '.join(DYNAMIC_OPS)} weights onnxruntime quantizes per output channel")
    report["settings"]["activations"] = info
    if calib is not None:
        record_dynamic_measurement(report, measure_against_fp32(model, qmodel, calib))
    return qmodel, report


def record_dynamic_measurement(report: dict, measured: dict) -> None:
    """The measurement against fp32 (against_fp32.measurement's keys) into the report and its notes."""
    report["settings"]["activations"] |= measured
    report["settings"]["notes"].append(measured_note("dynamic int8", report["settings"]["activations"]))
