"""Budget mode with calibration data: sensitivity-weighted allocation, checked by measurement.

The allocation's error model is linear per layer; on real networks a measured
sensitivity can mislead it (a layer that tolerates small noise may not tolerate
heavy pruning). So with calibration data both allocations are solved (data-free
and sensitivity-weighted), and the one with the lower measured output error on
the calibration inputs is kept; the report says which and why.
"""

from __future__ import annotations

import onnx

from .calibration import layer_sensitivity, relative_output_error
from .compress import OutputConfig, compress_model, find_model_layers
from .layers import Selection
from .methods.annc import AnncConfig
from .validate import Dataset, session


def compress_calibrated(model: onnx.ModelProto, config: AnncConfig, selection: Selection,
                        output: OutputConfig, calib: Dataset, progress=None) -> tuple[onnx.ModelProto, dict]:
    """Budget-mode compression whose layer weighting is chosen on calibration data."""
    layers, _ = find_model_layers(model, selection)
    sensitivity = layer_sensitivity(model, {l.name: l.values for l in layers}, calib, progress=progress)
    reference = session(model)
    candidates = []
    for weighting, sens in (("data-free", None), ("sensitivity", sensitivity)):
        out, report = compress_model(model, config, selection, output, sensitivity=sens)
        candidates.append((relative_output_error(reference, session(out), calib), weighting, out, report))
    error, weighting, out, report = min(candidates, key=lambda c: c[0])
    report["settings"]["calibration"] = {
        "chosen": weighting,
        "relative_output_error": {c[1]: c[0] for c in candidates},
        "sensitivity": sensitivity,
    }
    return out, report
