"""A quantized model measured against its fp32 original on the calibration inputs: output SNR
and latency at one thread (workflows.activations, workflows.dynamic)."""

from __future__ import annotations

import numpy as np
import onnx

from ..runtime.data import Dataset
from ..runtime.sessions import fixed_batch, median_latency_ms, run_samples, session

TIMED_RUNS, WARMUP_RUNS, TIMING_THREADS = 20, 3, 1  # the latency measured against fp32


def output_snr_db(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """10·log10(‖ref‖² / ‖ref − cand‖²) over all outputs.

    >>> round(output_snr_db([np.ones(4)], [np.full(4, 1.1)]), 1)
    20.0
    """
    signal = sum(float((r.astype(np.float64) ** 2).sum()) for r in reference)
    noise = sum(float(((r.astype(np.float64) - c) ** 2).sum()) for r, c in zip(reference, candidate))
    return float("inf") if noise == 0 else float(10 * np.log10(signal / max(noise, 1e-300)))


def measure_against_fp32(reference: onnx.ModelProto, qmodel: onnx.ModelProto, data: Dataset, samples: int = 32) -> dict:
    """Output SNR against the fp32 model and the latency ratio at one thread (median of runs)."""
    ref_sess, cand_sess = session(reference, TIMING_THREADS), session(qmodel, TIMING_THREADS)
    snr = output_snr_db(run_samples(ref_sess, data.inputs, samples), run_samples(cand_sess, data.inputs, samples))
    batch = fixed_batch(ref_sess) or 1
    feed = {k: v[:batch] for k, v in data.inputs.items()}
    ref_ms, cand_ms = median_latency_ms([ref_sess, cand_sess], feed, TIMED_RUNS, WARMUP_RUNS)
    return measurement(snr, ref_ms, cand_ms, batch)


def measurement(snr: float, ref_ms: float, cand_ms: float, batch: int) -> dict:
    """What `measure_against_fp32` reports, from figures measured elsewhere in the same way."""
    return {"fp32_snr_db": snr, "latency_ms": cand_ms, "fp32_latency_ms": ref_ms,
            "latency_ratio": cand_ms / ref_ms if ref_ms else None, "threads": TIMING_THREADS,
            "timing": f"batch {batch}, median of {TIMED_RUNS} runs after {WARMUP_RUNS} warm-up runs"}


def measured_note(what: str, info: dict) -> str:
    return (f"{what} measured on the calibration inputs: output SNR {info['fp32_snr_db']:.1f} dB against fp32, "
            f"latency {info['latency_ratio']:.2f}x fp32's ({info['timing']}, {info['threads']} thread)")
