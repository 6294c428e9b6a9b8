"""Compress a file in the mode its config asks for: a plain solve, a calibrated budget, an
accuracy search or activation quantization, streamed where the weights stay on disk."""

from __future__ import annotations

import json
import os

import onnx

from ..errors import OptionError
from ..graph.io import (check_model_valid, load_external, load_model_lazy, model_inputs, remove_model,
                        save_model, uses_external_data, write_text_atomic)
from ..graph.outputs import check_outputs
from ..graph.layers import Selection
from ..graph.opset import check_supported
from ..methods.annc import AnncConfig
from ..methods.opq import OpqConfig
from ..pipeline.compress import OutputConfig, check_output, compress_model
from ..pipeline.report import file_totals
from ..pipeline.stream import compress_streaming
from ..runtime.data import load_dataset
from ..runtime.sessions import open_session
from .activations import ActivationConfig, compress_with_activations
from .auto_activations import compress_auto
from .dynamic import compress_dynamic
from .file_budget import within_file_size
from .data_aware import DataAwareConfig, compress_data_aware
from .search import SearchConfig, search_rate


def _run(model, config, selection, output, activations, progress, calib, log=None, data_aware=None):
    """Dispatch on the config: a plain solve, an accuracy search, activation quantization; with
    calibration data every weight mode is solved data-aware (workflows.data_aware)."""

    def dataset(path):  # one clear error for a model onnxruntime rejects, before any data is read
        return load_dataset(path, open_session(model))

    if activations is not None and activations.mode == "dynamic":
        if isinstance(config, SearchConfig):
            raise OptionError("--max-drop searches weight compression only; drop --activations")
        out, report = compress_dynamic(model, config, selection, output, dataset(calib) if calib else None,
                                       progress)
        check_output(out, output.check_runtime)
        return out, report
    if activations is not None:
        if calib is None:
            raise OptionError("activation quantization needs calibration data (--calib DATA.npz)"
                              + ("; auto measures static and dynamic int8 on it" if activations.mode == "auto" else ""))
        if isinstance(config, SearchConfig):
            raise OptionError("--max-drop searches weight compression only; drop --activations")
        build = compress_auto if activations.mode == "auto" else compress_with_activations
        out, report = build(model, config, selection, output, activations, dataset(calib), progress)
        check_output(out, output.check_runtime)
        return out, report
    options = data_aware or DataAwareConfig()
    if isinstance(config, SearchConfig):
        solve = None
        if calib is not None:
            data = dataset(calib)
            solve = lambda m, c, s, o: compress_data_aware(m, c, s, o, data, options, log)  # noqa: E731
        return search_rate(model, config, dataset(config.data_path), selection, output,
                           progress=(lambda e: log(_evaluation_line(e))) if log else None, compress=solve)
    if calib is not None:
        data = dataset(calib)
        solve = lambda c: compress_data_aware(model, c, selection, output, data, options, log)  # noqa: E731
    else:
        solve = lambda c: compress_model(model, c, selection, output, progress)  # noqa: E731
    if output.format == "packed" and isinstance(config, AnncConfig) and config.size_kb is not None:
        return within_file_size(solve, config)
    return solve(config)


def _evaluation_line(e: dict) -> str:
    """One progress line of the accuracy search: the rate tried and whether it stayed within the limit."""
    return (f"search: rate {e['rate']:.3g}x (storage {e['storage_rate']:.1f}x) loses {e['drop']:.2f} points: "
            + ("within the limit" if e["ok"] else "over the limit"))


def streamable(model: onnx.ModelProto, config, output: OutputConfig, activations, calib) -> bool:
    """Whether `compress_file` takes the streaming path: the model (loaded without its
    external data) keeps tensors in external data, and the settings need no whole-model
    onnxruntime session: a data-free OPQ solve (Laplace ratios) or budget (--rate,
    --size-kb, any objective), written as qdq or float. Calibration data, activation
    quantization, the accuracy search and sparse storage load the whole model."""
    solve = (type(config) is OpqConfig and config.prune_mode == "laplace") or type(config) is AnncConfig
    return (solve and calib is None and output.format in ("qdq", "float") and activations is None
            and uses_external_data(model))


def compress_file(src: str | os.PathLike, dst: str | os.PathLike,
                  config: OpqConfig | AnncConfig | SearchConfig = OpqConfig(),
                  selection: Selection = Selection(), output: OutputConfig = OutputConfig(),
                  report_path: str | os.PathLike | None = None, progress=None,
                  calib: str | os.PathLike | None = None,
                  activations: ActivationConfig | None = None, log=None,
                  data_aware: DataAwareConfig | None = None) -> dict:
    """Compress the ONNX file `src` into `dst` (written atomically); return the report.

    `calib` (an .npz of model inputs) makes every weight mode data-aware: each layer
    is solved on the inputs it sees on it, as `data_aware` says (see
    `workflows.data_aware`); with `activations` the
    activations are quantized too, calibrated on it. A model storing its weights
    as external data is compressed by streaming where the settings allow (see
    `streamable` and `pipeline.stream`), with the same result and peak memory of
    about one layer plus the codes. `log` (a callable taking a line of text) hears
    the accuracy search's evaluations as they finish.

    Refused before any work (`outputs.check_outputs`): an output or report that is
    the input, its external data, the --calib or --data file, or the other output;
    a model onnx.checker rejects (`io.check_model_valid`, full check).
    """
    model = load_model_lazy(src)
    search_data = config.data_path if isinstance(config, SearchConfig) else None
    check_outputs([*model_inputs(src, model), ("the --calib file", calib), ("the --data file", search_data)],
                  [("output", dst), ("output data file", f"{os.fspath(dst)}.data"), ("report", report_path)])
    check_supported(model, str(src), old_opset_ok=True)
    check_model_valid(model, src)
    if streamable(model, config, output, activations, calib):
        report, bytes_out = compress_streaming(model, src, dst, config, selection, output, progress)
    else:
        load_external(model, src)
        out, report = _run(model, config, selection, output, activations, progress, calib, log, data_aware)
        bytes_out = save_model(out, dst)
    try:  # no model without its report: a failed or interrupted run leaves nothing behind
        report["totals"].update(file_totals(src, dst, bytes_out))
        if report_path is not None:
            write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")
    except BaseException:
        remove_model(dst)
        raise
    return report
