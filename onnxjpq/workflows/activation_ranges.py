"""Activation ranges for static int8 beyond onnxruntime's single calibrator per model.

`mse`: each activation's clipping range is the one of least uint8 quantization error on a
histogram of its calibration values (`core.clipping`). `auto`: each activation takes, from
onnxruntime's MinMax, Percentile and Entropy ranges and the MSE one, the range whose
quantization the model's outputs suffer least from. A float copy of the model in which every
activation is fake-quantized (QuantizeLinear → DequantizeLinear, computed by onnxruntime's
unfused kernels, with the scales and zero points as feeds) is scored by its output SNR against
the float model: first with one method for all activations (the best is the start), then for
each candidate of each of the SEARCH_TENSORS activations that their MSE range quantizes most
coarsely, in graph order, the others held at their current choice (one pass of coordinate
descent; the search is bounded so that a model of hundreds of activations takes a minute).
The result is written as onnxruntime's calibration cache, which
quantize_static then reads instead of calibrating.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.clipping import clipping_mse, mse_range
from ..graph.normalize import sort_nodes
from ..runtime.data import Dataset
from ..runtime.sessions import run_samples, session

BINS = 2048
PROBE_BATCH = 8  # samples per probe run: every candidate tensor of a batch is held at once
SEARCH_SAMPLES = 8  # calibration samples each candidate of `auto` is scored on
SEARCH_TENSORS = 32  # `auto` searches the activations of lowest SQNR under their MSE range; the rest keep it

Ranges = dict[str, tuple[float, float]]


def read_cache(path: Path) -> Ranges:
    """Tensor → (lowest, highest) from onnxruntime's calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    def scalar(x) -> float:  # onnxruntime stores 0-d or 1-element arrays
        return float(np.asarray(x).reshape(-1)[0])

    return {name: (scalar(d.range_value[0]), scalar(d.range_value[1])) for name, d in load_tensors_data(path).data.items()}


def write_cache(path: Path, ranges: Ranges) -> None:
    """`ranges` as onnxruntime's calibration cache, labelled MinMax (what the quantizer must be
    told it was made with)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in sorted(ranges.items())}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def _exposed(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    return probe


def mse_ranges(model: onnx.ModelProto, observed: Ranges, data: Dataset,
               samples: int) -> tuple[Ranges, dict[str, float]]:
    """The least-MSE range of each tensor in `observed` (its min/max on the calibration data,
    which bound its histogram), from the first `samples` calibration inputs; and the SQNR (dB)
    that range gives each tensor."""
    names = sorted(observed)
    sess = session(_exposed(model, names))
    index = {o.name: i for i, o in enumerate(sess.get_outputs())}
    counts = {name: np.zeros(BINS) for name in names}
    n = min(samples, len(data))
    for start in range(0, n, PROBE_BATCH):
        batch = {k: v[start:min(start + PROBE_BATCH, n)] for k, v in data.inputs.items()}
        values = run_samples(sess, batch, PROBE_BATCH)
        for name in names:
            lo, hi = observed[name]
            counts[name] += np.histogram(np.clip(values[index[name]], lo, hi), BINS, (lo, hi))[0] if hi > lo else 0
    ranges, sqnr = {}, {}
    for name in names:
        lo, hi = observed[name]
        if hi <= lo:
            ranges[name], sqnr[name] = observed[name], np.inf
            continue
        edges = np.linspace(lo, hi, BINS + 1)
        ranges[name] = mse_range(counts[name], edges)
        centers = (edges[:-1] + edges[1:]) / 2
        power = float((counts[name] * centers**2).sum() / (counts[name].sum() or 1.0))
        error = float(clipping_mse(counts[name], centers, *map(np.asarray, ranges[name]))[()])
        sqnr[name] = 10 * np.log10(power / error) if error > 0 and power > 0 else np.inf
    return ranges, sqnr


def _fake_quantized(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy in which each named tensor passes through QuantizeLinear → DequantizeLinear (uint8)
    whose scale `<name>::fq_scale` and zero point `<name>::fq_zero` are graph inputs."""
    fake = onnx.ModelProto()
    fake.CopyFrom(model)
    graph = fake.graph
    produced = {t for node in graph.node for t in node.output}
    nodes = []
    for name in names:
        scale, zero, source = f"{name}::fq_scale", f"{name}::fq_zero", f"{name}::fq_source"
        graph.input.extend([helper.make_tensor_value_info(scale, TensorProto.FLOAT, []),
                            helper.make_tensor_value_info(zero, TensorProto.UINT8, [])])
        graph.initializer.extend([numpy_helper.from_array(np.array(1.0, np.float32), scale),
                                  numpy_helper.from_array(np.array(0, np.uint8), zero)])
        if name in produced:  # the producer writes `source`; every reader, graph outputs too, sees the quantized value
            for node in graph.node:
                node.output[:] = [source if t == name else t for t in node.output]
            quantized_input, output = source, name
        else:  # a graph input: its readers read the quantized copy
            output = f"{name}::fq"
            for node in graph.node:
                node.input[:] = [output if t == name else t for t in node.input]
            quantized_input = name
        nodes.append((name, [helper.make_node("QuantizeLinear", [quantized_input, scale, zero], [f"{name}::fq_q"]),
                             helper.make_node("DequantizeLinear", [f"{name}::fq_q", scale, zero], [output])]))
    graph.node.extend(node for _, pair in nodes for node in pair)
    sort_nodes(graph)
    return fake


def _qparams(lo: float, hi: float) -> dict[str, np.ndarray]:
    """onnxruntime's own uint8 scale and zero point for a range."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    zero, scale = compute_scale_zp(np.array(min(lo, 0.0), np.float32), np.array(max(hi, 0.0), np.float32),
                                   np.array(0, np.uint8), np.array(255, np.uint8))
    return np.asarray(scale, np.float32).reshape(()), np.asarray(zero, np.uint8).reshape(())


def choose_ranges(model: onnx.ModelProto, candidates: dict[str, dict[str, tuple[float, float]]], data: Dataset,
                  searched: list[str], progress=None) -> tuple[Ranges, dict[str, str]]:
    """Per tensor, a candidate range (candidates: tensor → method → (lo, hi), every method given
    for every tensor) under which the fake-quantized model's outputs have the highest SNR against
    `model`'s: first the best single method for all tensors, then, tensor by tensor in graph order,
    each of `searched` moved to the best of its candidates. Returns the ranges and the methods."""
    from .against_fp32 import output_snr_db

    names = [n for n in _graph_order(model) if n in candidates]
    reference = run_samples(session(model), data.inputs, SEARCH_SAMPLES)
    sess = session(_fake_quantized(model, names), exact=True)
    qparams = {(name, method): _qparams(*bounds) for name in names for method, bounds in candidates[name].items()}

    def snr(chosen: dict[str, str]) -> float:
        feeds = {}
        for name in names:
            feeds[f"{name}::fq_scale"], feeds[f"{name}::fq_zero"] = qparams[name, chosen[name]]
        return output_snr_db(reference, run_samples(sess, data.inputs, SEARCH_SAMPLES, feeds))

    methods = sorted(set.intersection(*(set(c) for c in candidates.values())))
    uniform = {method: snr({name: method for name in names}) for method in methods}
    base = max(methods, key=lambda m: (uniform[m], m))
    chosen, best = {name: base for name in names}, uniform[base]
    order = [n for n in names if n in set(searched)]
    for name in progress(order) if progress else order:
        current = chosen[name]
        for method, bounds in candidates[name].items():
            if method == current or np.allclose(bounds, candidates[name][current], rtol=1e-4, atol=0):
                continue
            measured = snr({**chosen, name: method})
            if measured > best:
                best, current = measured, method
        chosen[name] = current
    return {name: candidates[name][chosen[name]] for name in names}, chosen


def _graph_order(model: onnx.ModelProto) -> list[str]:
    """Graph inputs, then every node output, in node order."""
    return [i.name for i in model.graph.input] + [t for node in model.graph.node for t in node.output]
