"""Activation quantization: a full QDQ model that onnxruntime runs with integer kernels.

onnxruntime.quantization places the QuantizeLinear/DequantizeLinear pairs
(the standard QDQ placement: uint8 activations, int8 weights, zero point 0,
accepted by TensorRT, OpenVINO and QNN) and calibrates the activation ranges
(MinMax, Entropy or Percentile). The weights keep onnxjpq's codes exactly: each
compressed weight gets a tensor override with its step as scale.

Static int8 collapses some real models (activation outliers in transformers
and 1-D conv nets), so the effect of each quantized activation is measured on
the calibration data (the SQNR of its own quantization, from one run that
exposes every candidate tensor), and the most harmful ones are kept in float
(bisection on how many) until the output SNR against the weight-compressed
float model reaches the target.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
import tempfile
from contextlib import contextmanager, redirect_stdout
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import DataError, ModelError, OptionError, first_line
from ..graph.normalize import constants_as_initializers, sort_nodes
from ..graph.opset import default_opset, upgrade
from ..graph.fold import fold_batch_norms
from ..runtime.data import Dataset
from ..runtime.sessions import ORT_ERRORS, fixed_batch, run_samples, session
from .activation_ranges import SEARCH_TENSORS, choose_ranges, mse_ranges, read_cache, write_cache
from .against_fp32 import measure_against_fp32, measured_note, output_snr_db
from .evaluate import agreement, cosine, snr_db
from .fidelity import choose_metric, describe, points

CALIBRATORS = ("minmax", "entropy", "percentile", "mse", "auto")  # the last two: workflows.activation_ranges
ORT_CALIBRATORS = ("minmax", "percentile", "entropy")
PER_AXIS_OPSET = 13  # DequantizeLinear's axis attribute (per-channel steps)
# outputs this close to the float model's pass --act-max-drop too: near-ties between classes (a
# pitch bin of 360, a flip in one of few calibration samples) can cost points no user would see
ENOUGH_SNR_DB = 25.0


@dataclass(frozen=True)
class ActivationConfig:
    """calibrate: onnxruntime's calibrator (minmax, entropy, percentile), or mse / auto
    (workflows.activation_ranges: least-error ranges, or per activation the range the outputs
    suffer least from); max_drop: points of output 0's fidelity measure
    (`workflows.fidelity`: top-1 agreement, 100 x cosine or output-energy points) the
    quantized model may lose against the weight-compressed float model on the calibration
    data; min_snr_db: instead, the output SNR to reach over all outputs; samples: calibration
    inputs used; weights_qdq: weights as float -> Q -> DQ pairs; weights: the integer container of
    the weight codes: int8 with zero point 0 (the placement TensorRT, OpenVINO and QNN take),
    uint8 with the codes + 128, or auto: both tried on this CPU and the better kept (x86 without
    VNNI multiplies uint8 by int8 with 16-bit saturation, uint8 by uint8 exactly)."""

    calibrate: str = "minmax"
    max_drop: float = 1.0
    min_snr_db: float | None = None
    samples: int = 128
    weights_qdq: bool = False
    weights: str = "auto"
    mode: str = "static"  # "dynamic": workflows.dynamic (MatMul/Gemm, no calibration needed); "auto": both, measured

    def __post_init__(self):
        if self.mode not in ("static", "dynamic", "auto"):
            raise OptionError(f"activation mode must be static, dynamic or auto, got {self.mode!r}")
        if self.weights not in ("auto", "int8", "uint8"):
            raise OptionError(f"activation-path weights must be auto, int8 or uint8, got {self.weights!r}")
        if self.calibrate not in CALIBRATORS:
            raise OptionError(f"calibrator must be one of {', '.join(CALIBRATORS)}, got {self.calibrate!r}")
        if self.samples < 1:
            raise OptionError(f"calibration samples must be >= 1, got {self.samples}")
        if self.min_snr_db is not None and not (np.isfinite(self.min_snr_db) and self.min_snr_db >= 0):
            raise OptionError(f"the activation SNR target must be a finite number of dB >= 0, got {self.min_snr_db}")
        if not (np.isfinite(self.max_drop) and 0 <= self.max_drop <= 100):
            raise OptionError(f"the activations' max drop must be 0 to 100 points, got {self.max_drop}")


@dataclass(frozen=True)
class _Target:
    """What an attempt is judged by: a score of its outputs against the float model's, to reach."""

    measure: str  # "snr_db" (dB over all outputs) or a workflows.fidelity metric of output 0
    reason: str
    goal: float
    enough_snr_db: float | None = None  # an output SNR this high passes whatever the score

    def met(self, score: float, snr: float) -> bool:
        return score >= self.goal or (self.enough_snr_db is not None and snr >= self.enough_snr_db)

    def score(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
        if self.measure == "snr_db":
            return output_snr_db(reference, candidate)
        ref, cand = reference[0].astype(np.float64), candidate[0].astype(np.float64)
        if self.measure == "agreement":
            return agreement(ref, cand)
        if self.measure == "cosine":
            return points("cosine", cosine=cosine(ref, cand))
        return points("snr", snr_db=snr_db(ref, cand))


def target_for(model: onnx.ModelProto, reference: list[np.ndarray], config: ActivationConfig) -> _Target:
    """What int8 outputs must reach against `reference` (the float model's outputs on the calibration data)."""
    if config.min_snr_db is not None:
        return _Target("snr_db", "--act-snr: output SNR over all outputs", config.min_snr_db)
    metric = choose_metric(model.graph.output[0].name, list(reference[0].shape[1:]), False, model)
    return _Target(metric.name, metric.reason, 100.0 - config.max_drop, ENOUGH_SNR_DB)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a Dataset, in small batches
    (whole batches of the model's fixed batch size when it has one)."""

    def __init__(self, data: Dataset, samples: int, fixed: int | None = None):
        n, batch = min(samples, len(data)), fixed or 8
        if fixed:
            n = max(n - n % fixed, fixed)
        self._feeds = [{k: v[i:i + batch] for k, v in data.inputs.items()} for i in range(0, n, batch)]
        self._next = iter(self._feeds)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._feeds)

    def __len__(self):
        return len(self._feeds)


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod
    return {"entropy": CalibrationMethod.Entropy,  # mse and auto write their ranges as a MinMax cache
            "percentile": CalibrationMethod.Percentile}.get(name, CalibrationMethod.MinMax)


def _override(step, unsigned: bool = False) -> list[dict]:
    """onnxruntime's TensorQuantOverrides entry giving a weight onnxjpq's step(s): int8 codes
    with zero point 0, or (`unsigned`) the same codes + 128 as uint8 with zero point 128."""
    zero = np.array(128, np.uint8) if unsigned else np.array(0, np.int8)  # arrays: onnxruntime refuses scalars

    def scale(s) -> np.ndarray:  # an all-zero layer or channel has step 0: any step codes it as 0
        return np.array(s if s > 0 else 1.0, np.float32)

    if isinstance(step, tuple):
        axis, steps = step
        entries = [{"scale": scale(s), "zero_point": zero} for s in steps]
        entries[0]["axis"] = axis
        return entries
    return [{"scale": scale(step), "zero_point": zero}]


def _quantize(src: Path, dst: Path, cache: Path, reader: _Reader, config: ActivationConfig,
              steps: dict[str, float], exclude: list[str], unsigned: bool = False) -> onnx.ModelProto:
    overrides = {name: _override(step, unsigned) for name, step in steps.items()}
    try:
        with _quiet():
            _quantize_static(src, dst, cache, reader, config, overrides, exclude, unsigned)
    except Exception as exc:  # onnxruntime.quantization raises many types, with multi-line messages
        raise ModelError(f"onnxruntime's quantizer failed on this model: {first_line(exc)}") from exc
    qmodel = onnx.load(str(dst))
    sort_nodes(qmodel.graph)  # onnxruntime's quantizers can write nodes out of order around If branches
    return qmodel


@contextmanager
def _quiet():
    """onnxruntime.quantization's logging and prints silenced: advice on every call, tracebacks of the
    pre-processing failures it recovers from (ours raise), and its calibrators' numpy warnings
    (all-NaN ranges: the failure that follows is reported in one line)."""
    import onnxruntime

    loggers = [logging.getLogger(), logging.getLogger("onnxruntime")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    onnxruntime.set_default_logger_severity(3)  # the sessions it opens warn about initializers it left unused
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # its calibrators print progress
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        onnxruntime.set_default_logger_severity(2)  # onnxruntime's default (there is no getter)
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _quantize_static(src, dst, cache, reader, config, overrides, exclude, unsigned) -> None:
    from onnxruntime.quantization import QuantType, quantize_static

    per_channel = any("axis" in entries[0] for entries in overrides.values())
    reader.rewind()
    quantize_static(str(src), str(dst), reader, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    nodes_to_exclude=exclude, calibrate_method=_calibrate_method(config.calibrate),
                    calibration_cache_path=str(cache),
                    extra_options={"TensorQuantOverrides": overrides, "WeightSymmetric": True,
                                   "ActivationSymmetric": False, "AddQDQPairToWeight": config.weights_qdq})


def _preprocess(model: onnx.ModelProto, path: Path, weights: set[str]) -> onnx.ModelProto:
    """onnxruntime's recommended pre-processing (shape inference, constant folding, Identity
    removal), so that every Conv/MatMul fuses with its Q/DQ pairs; saved at `path`. Where its
    graph optimisation rewrites one of `weights` (a Conv+BatchNormalization fusion scales the
    weights onnxjpq coded), it runs again without that optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    constants_as_initializers(prepared)  # the quantizer calibrates a Constant's output as an activation
    processed = prepared
    for skip_optimization in (False, True):
        scratch = onnx.ModelProto()  # quant_pre_process may move the tensors to external data in place
        scratch.CopyFrom(prepared)
        try:
            with _quiet():
                quant_pre_process(scratch, str(path), skip_optimization=skip_optimization, skip_symbolic_shape=True)
            candidate = onnx.load(str(path))
        except Exception:  # pre-processing is an optimisation: quantize the model as it is
            continue
        constants_as_initializers(candidate)
        if weights <= {t.name for t in candidate.graph.initializer}:
            processed = candidate
            break
    processed = _named(processed)
    onnx.save_model(processed, str(path))
    return processed


def _per_axis_ready(model: onnx.ModelProto, steps: dict) -> tuple[onnx.ModelProto, dict, list[str]]:
    """A model below opset 13 upgraded for per-channel DequantizeLinear; where onnx cannot
    upgrade it, its per-channel weights are left to onnxruntime's per-tensor quantization
    (the notes say so)."""
    if default_opset(model) >= PER_AXIS_OPSET or not any(isinstance(s, tuple) for s in steps.values()):
        return model, steps, []
    upgraded = upgrade(model, PER_AXIS_OPSET)
    if upgraded is not None:
        return upgraded, steps, [f"upgraded from opset {default_opset(model)} to {PER_AXIS_OPSET} for "
                                 "per-channel DequantizeLinear"]
    per_tensor = {name: s for name, s in steps.items() if not isinstance(s, tuple)}
    return model, per_tensor, [f"opset {default_opset(model)} has no per-channel DequantizeLinear and onnx "
                               f"cannot upgrade it: {len(steps) - len(per_tensor)} per-channel weights "
                               "quantized again per tensor by onnxruntime"]


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every main-graph node a name: nodes are excluded from quantization by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def _quantized_tensors(qmodel: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Activation tensor → (scale, zero point) of every QuantizeLinear on a non-constant input."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    found = {}
    for node in qmodel.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            zero = int(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else 0
            found[node.input[0]] = (float(inits[node.input[1]]), zero)
    return found


def _float_name(name: str, known: set[str]) -> str | None:
    """The float model's name of a tensor of the QDQ model (a graph output gets renamed)."""
    if name in known:
        return name
    base = name.removesuffix("_QuantizeLinear_Input")
    return base if base in known else None


def _choose_ranges(model, src, dst, cache, data, config, steps, exclude, fixed) -> str:
    """Write the calibration cache of `--act-calibrate mse|auto` (workflows.activation_ranges)
    at `cache`; returns a note of what was chosen."""
    methods = ORT_CALIBRATORS if config.calibrate == "auto" else ("minmax",)
    candidates: dict[str, dict[str, tuple[float, float]]] = {}
    for method in methods:
        path = cache.with_name(f"{method}.json")
        _quantize(src, dst, path, _Reader(data, config.samples, fixed), replace(config, calibrate=method),
                  steps, exclude)
        for name, bounds in read_cache(path).items():
            candidates.setdefault(name, {})[method] = bounds
    observed = {name: c["minmax"] for name, c in candidates.items()}
    least_mse, sqnr = mse_ranges(model, observed, data, config.samples)
    if config.calibrate == "mse":
        write_cache(cache, least_mse)
        return f"{len(least_mse)} activation ranges of least quantization error on the calibration data (--act-calibrate mse)"
    for name, bounds in least_mse.items():
        candidates[name]["mse"] = bounds
    searched = sorted(least_mse, key=lambda name: (sqnr[name], name))[:SEARCH_TENSORS]
    ranges, chosen = choose_ranges(model, candidates, data, searched)
    write_cache(cache, ranges)
    counts = ", ".join(f"{m} {n}" for m, n in sorted(Counter(chosen.values()).items(), key=lambda kv: -kv[1]))
    return (f"activation ranges chosen by the output error they cause (--act-calibrate auto; the best single "
            f"calibrator, then each of the {len(searched)} noisiest activations on its own): {counts}")


def rank_by_harm(model: onnx.ModelProto, qparams: dict[str, tuple[float, int]], data: Dataset,
                 samples: int = 8) -> list[tuple[str, float]]:
    """Quantized activations with the SQNR (dB) of their own uint8 quantization, worst first."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {t for n in probe.graph.node for t in n.output} | {i.name for i in probe.graph.input}
    qparams = {_float_name(n, known): v for n, v in qparams.items() if _float_name(n, known)}
    outputs = {o.name for o in probe.graph.output}
    names = [n for n in qparams if n not in outputs]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    values = dict(zip([o.name for o in probe.graph.output], run_samples(session(probe), data.inputs, samples)))
    ranked = []
    for name, (scale, zero) in qparams.items():
        x = values[name].astype(np.float64)
        q = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
        ranked.append((name, output_snr_db([x], [q])))
    return sorted(ranked, key=lambda item: (item[1], item[0]))


def _neighbours(model: onnx.ModelProto, tensors: list[str]) -> list[str]:
    """Names of the nodes producing or consuming any of `tensors`."""
    wanted = set(tensors)
    return sorted({n.name for n in model.graph.node if wanted & (set(n.input) | set(n.output))})


def quantize_activations(model: onnx.ModelProto, steps: dict[str, float], data: Dataset,
                         config: ActivationConfig = ActivationConfig(), exclude: tuple[str, ...] = (),
                         progress=None) -> tuple[onnx.ModelProto, dict]:
    """Full QDQ version of a float `model` whose weights are multiples of `steps`.

    Returns the model and what was done: activations quantized, kept float, SNRs.
    """
    sess = session(model)
    reference = run_samples(sess, data.inputs, config.samples)
    target = target_for(model, reference, config)
    fixed = fixed_batch(sess)
    model, steps, notes = _per_axis_ready(model, steps)
    with tempfile.TemporaryDirectory(prefix="onnxjpq-act-") as tmp:
        src, dst, cache = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
        model = _preprocess(model, src, set(steps))
        if config.calibrate in ("mse", "auto"):
            notes.append(_choose_ranges(model, src, dst, cache, data, config, steps, list(exclude), fixed))

        def attempt(kept: list[str], unsigned: bool) -> tuple[onnx.ModelProto, float, float]:
            qmodel = _quantize(src, dst, cache, _Reader(data, config.samples, fixed), config, steps,
                               [*exclude, *_neighbours(model, kept)], unsigned)
            try:
                quantized = session(qmodel)
            except ORT_ERRORS as exc:  # not the inputs: the model its quantizer wrote
                raise ModelError(f"onnxruntime cannot load the model its quantizer wrote: {first_line(exc)}") from exc
            outputs = run_samples(quantized, data.inputs, config.samples)
            score, snr = target.score(reference, outputs), output_snr_db(reference, outputs)
            if progress:
                progress(len(kept), snr)
            return qmodel, score, snr

        unsigned = config.weights == "uint8"
        result = attempt([], unsigned)
        if config.weights == "auto":  # the better container on this CPU: score, then SNR
            alternative = attempt([], True)
            if alternative[1:] > result[1:]:
                notes.append(f"weights stored as uint8 + 128: on this CPU they measured {alternative[2]:.1f} dB "
                             f"against int8's {result[2]:.1f} dB (16-bit saturation of uint8 x int8 without "
                             "VNNI); --act-weights int8 writes the placement TensorRT, OpenVINO and QNN take")
                result, unsigned = alternative, True
        everything = result[1:]  # (score, SNR) with every activation int8
        ranked = rank_by_harm(model, _quantized_tensors(result[0]), data)
        kept: list[str] = []
        if not target.met(*result[1:]):
            result, kept = _bisect_float(lambda names: attempt(names, unsigned), [name for name, _ in ranked],
                                         lambda r: target.met(*r[1:]))
    qmodel, score, snr = result
    info = {"calibrate": config.calibrate, "weights": "uint8" if unsigned else "int8",
            "quantized": len(ranked) - len(kept), "kept_float": kept,
            "measure": target.measure, "measure_reason": target.reason, "score": score, "goal": target.goal,
            "met": target.met(score, snr), "enough_snr_db": target.enough_snr_db,
            "output_snr_db": snr, "all_int8": {"score": everything[0], "output_snr_db": everything[1]},
            "worst_sqnr_db": dict(ranked[:5]), "notes": notes}
    return qmodel, info


def carry_model_info(qmodel: onnx.ModelProto, compressed: onnx.ModelProto) -> None:
    """The compressed model's producer fields and metadata (onnxjpq's report) onto what
    onnxruntime's quantizer wrote."""
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(qmodel, key, getattr(compressed, key))
    del qmodel.metadata_props[:]
    qmodel.metadata_props.extend(compressed.metadata_props)


def _bisect_float(attempt, ranked: list[str], good):
    """Fewest worst-ranked activations to keep in float so that the attempt's result is `good`:
    (that result, the names kept float)."""
    lo, hi = 0, len(ranked)  # lo fails; hi: everything float
    best = attempt(ranked)
    if not good(best):
        return best, ranked
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result = attempt(ranked[:mid])
        if good(result):
            hi, best = mid, result
        else:
            lo = mid
    return best, ranked[:hi]


def compress_with_activations(model: onnx.ModelProto, weights_config, selection, output,
                              config: ActivationConfig, calib: Dataset, progress=None,
                              measure: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Compress the weights (any method), then quantize the activations on `calib`; with
    `measure`, time the result against fp32 (else `record_static_measurement` adds a
    measurement taken elsewhere).

    Weights are kept as int8 codes on their own steps: int4 Conv/MatMul kernels
    do not exist in onnxruntime, and speed is the point of this mode.
    """
    from ..pipeline.compress import apply_plan, plan_model

    float_output = replace(output, format="float", int4=False)
    model, folded = fold_batch_norms(model)  # the codes are then those of the weight the runtime multiplies by
    plan = plan_model(model, weights_config, selection, float_output)
    compressed, report = apply_plan(model, plan, selection, float_output,
                                    {"method": plan.method, "config": asdict(weights_config), "notes": []},
                                    progress)
    steps = {p.name: p.step if p.channel_steps is None else (p.channel_axis, p.channel_steps)
             for p in plan.layers}
    skipped = {s["name"] for s in report["skipped"]}
    exclude = tuple(n.name for n in _named(compressed).graph.node if skipped & set(n.input))
    qmodel, info = quantize_activations(compressed, steps, calib, config, exclude)
    if np.isnan(info["output_snr_db"]):  # never write a model whose measured fidelity is undefined
        raise DataError("the activation-quantized model's output SNR on the calibration data is NaN (the "
                        "model's outputs on it hold NaN or Inf); nothing was written")
    carry_model_info(qmodel, compressed)
    for row in report["layers"]:
        row["container"] = info["weights"]
        if row["bops"] is not None:
            row["bops"] *= 8 / 32  # uint8 activations
    total = report["totals"]
    if total["bops"]:
        total["bops"] = sum(row["bops"] for row in report["layers"] if row["bops"] is not None)
        total["bops_ratio"] = 1024 * total["macs"] / total["bops"]
    if folded:
        info["notes"].insert(0, f"{folded} BatchNormalization folded into the Conv before them")
    report["settings"]["activations"] = info
    notes = report["settings"]["notes"]
    notes.extend(info["notes"])
    goal = _goal_text(info)
    if not info["met"]:
        notes.append(f"activation target ({goal}) not reached even with every activation in float")
    elif info["kept_float"]:
        notes.append(f"{len(info['kept_float'])} activations kept in float to reach {goal}")
    if info["quantized"] == 0:
        notes.append("every activation stayed in float, so the output has no int8 activation path: the calibrator "
                     f"({config.calibrate})" + (" and the weights' QDQ pairs" if config.weights_qdq else "")
                     + " had no effect; allow a larger drop (--act-max-drop) to quantize some")
    if measure:
        record_static_measurement(report, measure_against_fp32(model, qmodel, calib))
    return qmodel, report


def record_static_measurement(report: dict, measured: dict) -> None:
    """The measurement against fp32 (against_fp32.measurement's keys) into the report and its
    notes, with the note on float islands that ate the speed."""
    info = report["settings"]["activations"]
    info |= measured
    notes = report["settings"]["notes"]
    notes.append(measured_note("int8", info) + f"; {len(info['kept_float'])} activations stayed float "
                 "(settings.activations.kept_float)")
    if info["kept_float"] and info["latency_ratio"] and info["latency_ratio"] >= 1:
        notes.append(_no_speed_note(info))


def _goal_text(info: dict) -> str:
    if info["measure"] == "snr_db":
        return f"an output SNR of {info['goal']:g} dB"
    return (f"{info['goal']:g} {describe(info['measure'])} against the float model ({info['measure_reason']}) "
            f"or an output SNR of {info['enough_snr_db']:g} dB")


def _no_speed_note(info: dict) -> str:
    """Float islands cost a DequantizeLinear/QuantizeLinear pair each and break the fusions:
    say when they ate the speed, and what every activation in int8 measured."""
    everything = info["all_int8"]
    measured = (f"an output SNR of {everything['output_snr_db']:.1f} dB" if info["measure"] == "snr_db" else
                f"{everything['score']:.2f} {describe(info['measure'])} (output SNR {everything['output_snr_db']:.1f} dB)")
    allow = ("a lower --act-snr" if info["measure"] == "snr_db"
             else f"--act-max-drop {math.ceil(100 * (100 - everything['score'])) / 100:g}")
    return (f"with {len(info['kept_float'])} activations in float the int8 model runs at "
            f"{info['latency_ratio']:.2f}x fp32's latency: no speed gained; with every activation in int8 it "
            f"measured {measured} on the calibration data ({allow} allows that; check it on your own metric)")
