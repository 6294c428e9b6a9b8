"""Measured per-layer sensitivity, for the budget allocation with `--calib`.

Each weight is perturbed with Gaussian noise of a fixed relative energy ε, and
the relative output error it causes is measured on calibration inputs:
sensitivity_i = (‖Δy‖²/‖y‖²) / ε. One onnxruntime session serves all layers:
the weights become graph inputs (an initializer that is also an input is a
default value that a feed overrides).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph.normalize import constants_as_initializers
from ..runtime.data import Dataset

from ..runtime.sessions import run_samples, session

NOISE = 1e-2


def _overridable(model: onnx.ModelProto, names: set[str]) -> tuple[onnx.ModelProto, set[str]]:
    """A copy whose named main-graph weights are graph inputs; returns it and the names it could open."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    constants_as_initializers(probe, names)
    inputs = {i.name for i in graph.input}
    opened = set()
    for tensor in graph.initializer:
        if tensor.name in names:
            opened.add(tensor.name)
            if tensor.name not in inputs:
                graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return probe, opened


def layer_sensitivity(model: onnx.ModelProto, weights: dict[str, np.ndarray], data: Dataset,
                      samples: int = 128, progress=None) -> dict[str, float]:
    """Relative output error per unit relative weight error, for each named weight.

    Weights the probe cannot reach (inside subgraphs) get the median sensitivity.
    """
    probe, opened = _overridable(model, set(weights))
    sess = session(probe)
    reference = [o.astype(np.float64) for o in run_samples(sess, data.inputs, samples)]
    energy = sum(float((r**2).sum()) for r in reference) or 1.0
    result = {}
    names = [n for n in weights if n in opened]
    for i, name in enumerate(progress(names) if progress else names):
        w = weights[name]
        rng = np.random.default_rng(i)
        noise = rng.standard_normal(w.shape) * np.sqrt(NOISE * float(np.mean(w.astype(np.float64) ** 2)))
        out = run_samples(sess, data.inputs, samples, {name: (w + noise).astype(w.dtype)})
        err = sum(float(((o - r) ** 2).sum()) for o, r in zip(out, reference))
        result[name] = err / energy / NOISE
    fallback = float(np.median(list(result.values()))) if result else 1.0
    return {n: result.get(n, fallback) for n in weights}


def relative_output_error(sess_ref, sess_cand, data: Dataset, samples: int = 256) -> float:
    """‖y_cand − y_ref‖² / ‖y_ref‖² over all outputs, on the first `samples` inputs."""
    ref = run_samples(sess_ref, data.inputs, samples)
    cand = run_samples(sess_cand, data.inputs, samples)
    err = sum(float(((c.astype(np.float64) - r) ** 2).sum()) for c, r in zip(cand, ref))
    return err / (sum(float((r.astype(np.float64) ** 2).sum()) for r in ref) or 1.0)
