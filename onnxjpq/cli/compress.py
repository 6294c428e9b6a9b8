"""`onnxjpq compress`."""

from __future__ import annotations

import json

import click


from .common import check_figure, given_options, make_console, progress_bar, progress_log, undo_on_failure, user_errors
from .group import main
from .options import data_aware_from, method_config, selection_from, with_data_aware, with_selection


def _listed(flags: list[str]) -> str:
    return f"{', '.join(flags)} only apply" if len(flags) > 1 else f"{flags[0]} only applies"


def _refuse_options_without_effect(activations: str, budget: bool, fmt: str = "qdq") -> None:
    """Options that the chosen mode never reads are refused rather than silently ignored."""
    from ..errors import OptionError

    if activations != "float" and fmt != "qdq":
        raise OptionError(f"--format {fmt} with --activations {activations}: the activation path writes its own "
                          "weights (int8 codes behind DequantizeLinear); drop --format, or --activations")

    unused = given_options(act_calibrate="--act-calibrate", act_max_drop="--act-max-drop", act_snr="--act-snr",
                           weights_qdq="--weights-qdq", act_weights="--act-weights")
    if unused and activations not in ("int8", "auto"):
        raise OptionError(f"{_listed(unused)} with --activations int8 or auto; without it "
                          f"{'they have' if len(unused) > 1 else 'it has'} no effect")
    if given_options(act_max_drop="--act-max-drop") and given_options(act_snr="--act-snr"):
        raise OptionError("give --act-max-drop or --act-snr, not both: they are two targets for the same choice")
    unused = given_options(min_bits="--min-bits", max_bits="--max-bits", pow2_bits="--pow2-bits",
                           objective="--objective")
    if unused and not budget:
        raise OptionError(f"{_listed(unused)} to the budget modes (--rate, --size-kb, --max-drop); "
                          f"with --prune/--bits {'they have' if len(unused) > 1 else 'it has'} no effect")


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="Where to write the compressed model.")
@click.option("--prune", type=float, default=None, help="Global fraction of weights to prune, in [0, 1) [default: 0].")
@click.option("--bits", type=float, default=None,
              help="Average bits per kept weight, in [2, 8]; fractions allowed [default: 8].")
@click.option("--rate", type=float, default=None,
              help="Budget mode: choose each layer's sparsity and bits to reach this storage rate (x).")
@click.option("--size-kb", type=float, default=None,
              help="Budget mode: choose each layer's sparsity and bits to fit the weights in this many KB.")
@click.option("--min-bits", type=int, default=2, show_default=True, help="Budget mode: narrowest code.")
@click.option("--max-bits", type=int, default=8, show_default=True, help="Budget mode: widest code.")
@click.option("--pow2-bits", is_flag=True, help="Budget mode: only 2, 4 or 8-bit codes.")
@click.option("--objective", type=click.Choice(["size", "paper", "bops"]), default="size", show_default=True,
              help="Budget mode: --rate is a storage rate (size), the papers' rate 32N/sum(bits x nonzero) "
                   "(paper), or a BOPs reduction (bops).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help=".npz of model inputs: every layer is solved on the inputs it sees on them (data-aware "
                   "compression, in every mode), and --activations int8 is calibrated on them.")
@with_data_aware
@click.option("--activations", type=click.Choice(["float", "int8", "dynamic", "auto"]), default="float",
              show_default=True,
              help="int8: also quantize activations (full QDQ model, integer kernels), calibrated on --calib; "
                   "dynamic: int8 MatMul/Gemm inputs quantized at run time (no calibration needed; with "
                   "--calib the output SNR and latency against fp32 are measured); auto: build both on "
                   "--calib and keep the faster that meets the --act-max-drop/--act-snr target.")
@click.option("--act-calibrate", type=click.Choice(["minmax", "entropy", "percentile", "mse", "auto"]), default="minmax",
              show_default=True, help="Activation ranges: one of onnxruntime's calibrators (minmax, entropy, "
                   "percentile); mse: each activation's range of least uint8 quantization error; auto: per "
                   "activation the range (of those four) its quantization harms the outputs least with, "
                   "measured on --calib (slower: a minute or two on a 300-activation CNN).")
@click.option("--act-max-drop", type=float, default=1.0, show_default=True,
              help="Keep the most harmful activations in float until the int8 model loses at most this "
                   "many points against the weight-compressed float model on --calib, in the measure that "
                   "fits output 0 (top-1 agreement for class scores, 100 x cosine for features, "
                   "output-energy points for a regression) or its output SNR reaches 25 dB.")
@click.option("--act-snr", type=float, default=None,
              help="Instead of --act-max-drop: the output SNR (dB, over all outputs) to reach.")
@click.option("--act-weights", type=click.Choice(["auto", "int8", "uint8"]), default="auto", show_default=True,
              help="With --activations int8/auto: weight codes as int8 with zero point 0 (what TensorRT, "
                   "OpenVINO and QNN take), as uint8 + 128, or auto: the better of both measured on this CPU "
                   "(x86 without VNNI saturates uint8 x int8 products).")
@click.option("--weights-qdq", is_flag=True,
              help="With --activations int8: weights as float -> QuantizeLinear -> DequantizeLinear pairs.")
@click.option("--max-drop", type=float, default=None,
              help="Search the highest rate losing at most this many accuracy points on --data "
                   "(agreement points with the fp32 model when the data has no labels).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="With --max-drop: .npz of model inputs (and labels) to measure on.")
@click.option("--metric", type=click.Choice(["auto", "accuracy", "agreement", "cosine", "snr"]), default="auto",
              show_default=True, help="With --max-drop: the fidelity measure whose points it counts; auto picks "
                                      "accuracy/agreement for class scores, cosine for embeddings, snr for "
                                      "one value per sample.")
@click.option("--prune-mode", type=click.Choice(["laplace", "exact"]), default="laplace", show_default=True,
              help="laplace: OPQ's per-layer ratios from the Laplace fit; exact: global magnitude.")
@click.option("--keep-survivors/--no-keep-survivors", default=True, show_default=True,
              help="Kept weights never round to 0 (the prune ratio asked is the one stored).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "float", "sparse", "packed"]), default="qdq",
              show_default=True, help="qdq: int4/int8 + DequantizeLinear; float: dequantized floats; "
                                      "sparse: int8 codes in sparse_initializer storage; packed: codes "
                                      "bit-packed at their width, decoded by standard ops (opset 18).")
@click.option("--int4/--no-int4", default=True, show_default=True,
              help="Store layers whose codes fit in 4 bits as int4 (opset 21).")
@click.option("--granularity", type=click.Choice(["auto", "layer", "channel"]), default="auto", show_default=True,
              help="Quantization steps: one per layer (OPQ), one per output channel, or per channel only "
                   "for layers with outlier channels (auto).")
@with_selection
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--plot", "plot_dir", type=click.Path(),
              help="Draw the per-layer bits and pruning figure (layers.png) in this folder; needs matplotlib.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (logs stay on stderr).")
@user_errors("src")
def compress(src, dst, prune, bits, rate, size_kb, min_bits, max_bits, pow2_bits, objective, calib, solver,
             sequential, activations, act_calibrate, act_max_drop, act_snr, act_weights, weights_qdq, max_drop, data_path, metric,
             prune_mode, keep_survivors, fmt, int4, granularity, include, exclude, keep, min_params, embeddings,
             report_path,
             plot_dir, quiet, as_json):
    """Prune and quantize the weights of SRC into a new ONNX file.

    Give --prune/--bits for the analytic OPQ solve, or --rate/--size-kb for
    the budget mode, which chooses each layer's sparsity and bit-width.
    """
    from ..workflows.activations import ActivationConfig
    from ..pipeline.compress import OutputConfig
    from ..workflows.compress import compress_file
    from ..pipeline.report import print_report

    _refuse_options_without_effect(activations, budget=rate is not None or size_kb is not None
                                   or max_drop is not None, fmt=fmt)
    config = method_config(prune, bits, prune_mode, keep_survivors, rate, size_kb, min_bits, max_bits,
                            pow2_bits, objective, max_drop, data_path, granularity)
    if metric != "auto":
        from dataclasses import replace

        from ..errors import OptionError
        from ..workflows.search import SearchConfig
        if not isinstance(config, SearchConfig):
            raise OptionError("--metric chooses the measure of --max-drop; give --max-drop and --data")
        config = replace(config, metric=metric)
    selection = selection_from(include, exclude, keep, min_params, embeddings)
    data_aware = data_aware_from(solver, sequential, calib)
    console = make_console(quiet)
    if plot_dir:  # before any work: a figure that cannot be drawn must not leave a model behind
        from ..graph.io import model_inputs
        check_figure(plot_dir, "layers.png", model_inputs(src), [("output", dst), ("report", report_path)])
    act = {"int8": ActivationConfig(calibrate=act_calibrate, max_drop=act_max_drop, min_snr_db=act_snr,
                                     weights_qdq=weights_qdq, weights=act_weights),
           "dynamic": ActivationConfig(mode="dynamic"),
           "auto": ActivationConfig(calibrate=act_calibrate, max_drop=act_max_drop, min_snr_db=act_snr,
                                    weights_qdq=weights_qdq, weights=act_weights, mode="auto")}.get(activations)
    report = compress_file(src, dst, config, selection, OutputConfig(format=fmt, int4=int4),
                           report_path=report_path, progress=progress_bar(console, "compressing layers"),
                           calib=calib, activations=act, log=progress_log(console), data_aware=data_aware)
    print_report(report, console)
    if "search" in report:
        found = report["search"]
        console.print(f"searched {len(found['evaluations'])} rates by {found['metric']} ({found['metric_reason']}"
                      + (f"; labels {found['labels']!r}" if found.get("labels") else "")
                      + f"): highest within {found['max_drop']:g} {found['unit']}: storage rate "
                      f"{report['totals']['storage_rate']:.1f}x")
    console.print(f"wrote {dst}")
    if plot_dir:
        from ..workflows.plots import plot_layers
        with undo_on_failure(dst, report_path):
            console.print(f"wrote {plot_layers(report, plot_dir)}")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
