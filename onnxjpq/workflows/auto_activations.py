"""`--activations auto`: static and dynamic int8 both built and measured, the faster one that
keeps the outputs kept.

Which int8 path pays depends on the model and the CPU: static QDQ runs every
layer type in integers but needs activation ranges (transformers' outliers
defeat them), dynamic quantizes only MatMul/Gemm inputs, at run time. Both are
built from the same weight codes, judged by the static path's target
(`--act-max-drop` in output 0's fidelity measure, or `--act-snr`) against the
fp32 model on the calibration data, and timed in one interleaved run at one
thread. The faster of those that meet the target is written; when neither
meets it, the one that scores higher. A path onnxruntime cannot build is left
out with its reason in the notes.
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from ..errors import ModelError
from ..runtime.data import Dataset
from ..runtime.sessions import fixed_batch, median_latency_ms, run_samples, session
from .activations import ActivationConfig, compress_with_activations, record_static_measurement, target_for
from .against_fp32 import TIMED_RUNS, TIMING_THREADS, WARMUP_RUNS, measurement, output_snr_db
from .dynamic import compress_dynamic, record_dynamic_measurement


def compress_auto(model: onnx.ModelProto, weights_config, selection, output, config: ActivationConfig,
                  calib: Dataset, progress=None) -> tuple[onnx.ModelProto, dict]:
    """The chosen int8 model and its report; `settings.activations.auto` holds both measurements."""
    built, failed = {}, {}
    static = replace(config, mode="static")
    for mode, build in (("static", lambda: compress_with_activations(model, weights_config, selection, output,
                                                                     static, calib, progress, measure=False)),
                        ("dynamic", lambda: compress_dynamic(model, weights_config, selection, output))):
        try:
            built[mode] = build()
        except ModelError as exc:  # onnxruntime could not build or load this path
            failed[mode] = str(exc)
    if "dynamic" in built and built["dynamic"][1]["settings"]["activations"]["int8_layers"] == 0:
        failed["dynamic"] = "no MatMul or Gemm weight onnxruntime's dynamic path quantizes"
        del built["dynamic"]
    if not built:
        raise ModelError(f"no int8 path runs on this model: static: {failed['static']}; dynamic: {failed['dynamic']}")
    measured, against_fp32 = _measure(model, {mode: qmodel for mode, (qmodel, _) in built.items()}, calib, config)
    passing = [m for m in measured if measured[m]["met"]]
    chosen = (min(passing, key=lambda m: measured[m]["latency_ratio"]) if passing
              else max(measured, key=lambda m: measured[m]["score"]))
    qmodel, report = built[chosen]
    record = record_static_measurement if chosen == "static" else record_dynamic_measurement
    record(report, against_fp32[chosen])
    info = report["settings"]["activations"]
    info["auto"] = {"chosen": chosen, "measured": measured, "not_built": failed}
    report["settings"]["notes"].append(_note(chosen, measured, failed, bool(passing)))
    return qmodel, report


def _measure(model: onnx.ModelProto, candidates: dict[str, onnx.ModelProto], calib: Dataset,
             config: ActivationConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """Score and SNR against fp32 on the calibration data, and latency relative to fp32 timed in
    turns with it; beside them, each candidate's figures as against_fp32.measurement gives them."""
    reference_session = session(model, TIMING_THREADS)
    reference = run_samples(reference_session, calib.inputs, config.samples)
    target = target_for(model, reference, config)
    sessions = {mode: session(qmodel, TIMING_THREADS) for mode, qmodel in candidates.items()}
    batch = fixed_batch(reference_session) or 1
    feed = {k: v[:batch] for k, v in calib.inputs.items()}
    base, *times = median_latency_ms([reference_session, *sessions.values()], feed, TIMED_RUNS, WARMUP_RUNS)
    measured, against_fp32 = {}, {}
    for (mode, sess), ms in zip(sessions.items(), times):
        outputs = run_samples(sess, calib.inputs, config.samples)
        score, snr = target.score(reference, outputs), output_snr_db(reference, outputs)
        measured[mode] = {"score": score, "output_snr_db": snr, "met": target.met(score, snr),
                          "latency_ratio": ms / base if base else float("inf"), "measure": target.measure}
        against_fp32[mode] = measurement(snr, base, ms, batch)
    return measured, against_fp32


def _note(chosen: str, measured: dict, failed: dict, any_met: bool) -> str:
    parts = [f"{mode}: {m['latency_ratio']:.2f}x fp32's latency, {m['score']:.2f} {m['measure']} points, output "
             f"SNR {m['output_snr_db']:.1f} dB{'' if m['met'] else ' (misses the target)'}"
             for mode, m in measured.items()]
    parts += [f"{mode}: not built ({reason})" for mode, reason in failed.items()]
    why = "the faster that meets the target" if any_met else "neither meets the target: the closer"
    slower = ("; no int8 path runs faster than fp32 on this model and CPU (--activations float keeps the float "
              "kernels)" if measured[chosen]["latency_ratio"] >= 1 else "")
    return f"--activations auto chose {chosen} ({why}); " + "; ".join(parts) + slower
