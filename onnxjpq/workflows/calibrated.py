"""Budget mode with calibration data: sensitivity-weighted allocation, checked by measurement.

The allocation's error model is linear per layer; on real networks a measured
sensitivity can mislead it (a layer that tolerates small noise may not tolerate
heavy pruning), and whether per-channel steps pay depends on the network
(transformers gain, small CNNs lose). So with calibration data the candidates
are solved (data-free and sensitivity-weighted; "auto" and per-channel steps
when the granularity is "auto"), and the one with the lowest measured output
error on the calibration inputs is kept; the report lists them all.
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from .calibration import layer_sensitivity, relative_output_error
from ..pipeline.compress import OutputConfig, compress_model, find_model_layers
from ..graph.layers import Selection
from ..methods.annc import AnncConfig
from ..runtime.data import Dataset
from ..runtime.sessions import session


def compress_calibrated(model: onnx.ModelProto, config: AnncConfig, selection: Selection,
                        output: OutputConfig, calib: Dataset, progress=None) -> tuple[onnx.ModelProto, dict]:
    """Budget-mode compression whose layer weighting is chosen on calibration data."""
    layers, _ = find_model_layers(model, selection)
    sensitivity = layer_sensitivity(model, {l.name: l.values for l in layers}, calib, progress=progress)
    reference = session(model)
    granularities = (config.granularity, "channel") if config.granularity == "auto" else (config.granularity,)
    candidates = []
    for granularity in granularities:
        for weighting, sens in (("data-free", None), ("sensitivity", sensitivity)):
            out, report = compress_model(model, replace(config, granularity=granularity), selection, output,
                                         sensitivity=sens)
            name = f"{weighting}, {granularity} steps"
            candidates.append((relative_output_error(reference, session(out), calib), name, out, report))
    error, chosen, out, report = min(candidates, key=lambda c: c[0])
    report["settings"]["calibration"] = {
        "chosen": chosen,
        "relative_output_error": {c[1]: c[0] for c in candidates},
        "sensitivity": sensitivity,
    }
    return out, report
