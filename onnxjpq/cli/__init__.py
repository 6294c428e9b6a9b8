"""Command line: `onnxjpq compress | inspect | demo | finetune | eval | sweep | sensitivity`.

The commands parse options, build configs and call the API. A user error
(`OnnxjpqError`, an unwritable output) prints one `error: ...` line on stderr
and exits with status 2; a failed validation (`ValidationError`) with 1.
Logs, tables and progress go to stderr; stdout carries only the JSON that
`--json` asks for.
"""

from __future__ import annotations

import json
import sys
from functools import wraps

import click

from .._version import __version__
from ..errors import OnnxjpqError, first_line


def _input_fault(path) -> OnnxjpqError | None:
    """Why the input model itself is unusable, or None: it cannot be read, is too new or too old,
    uses unknown operators or invalid names, fails onnx.checker, or onnxruntime rejects it."""
    import onnx

    from ..errors import ModelError
    from ..graph.io import load_model
    from ..graph.opset import check_supported
    from ..runtime.sessions import open_session

    try:
        model = load_model(path)
        check_supported(model, str(path))
        if model.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(model)
        open_session(path)
    except OnnxjpqError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - any failure to check the input is the input's
        return ModelError(f"{path}: not a valid ONNX model ({first_line(exc)})")
    return None


def _fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _user_errors(*model_args: str):
    """Turn the errors a command may meet into one `error: ...` line and an exit status.

    OnnxjpqError: its message, status `exit_code` (2, or 1 for a failed validation).
    OSError (a read-only folder, a full disk): the file and the reason, status 2.
    Any other exception is blamed on an input model named by `model_args` only
    when that input itself fails validation (`_input_fault`: onnx.checker,
    onnxruntime, supported opsets and domains), with the reason it fails; on a
    valid input it is our bug and keeps its traceback.
    """
    def decorate(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except OnnxjpqError as exc:
                _fail(str(exc), exc.exit_code)
            except OSError as exc:
                reason = exc.strerror or first_line(exc)
                _fail(f"{exc.filename}: {reason}" if exc.filename else f"cannot write the output: {reason}", 2)
            except Exception:
                for name in model_args:
                    fault = _input_fault(kwargs[name]) if kwargs.get(name) else None
                    if fault is not None:
                        _fail(str(fault), 2)
                raise
        return wrapper
    return decorate


def _console(quiet: bool = False):
    import shutil

    from rich.console import Console
    return Console(stderr=True, quiet=quiet, width=max(shutil.get_terminal_size((120, 24)).columns, 100))


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


EXIT_CODES = """\b
Exit status:
  0  success
  1  a compressed model failed the validation asked for
     (compress --max-drop, eval --max-drop)
  2  bad input or usage: unreadable or unsupported model, bad
     option or data file, output that cannot be written
Errors are one line on stderr ("error: ..."). Logs, tables and
progress go to stderr; with --json the JSON alone goes to stdout."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="onnxjpq")
def main():
    """Prune and quantize ONNX models (OPQ), and check them with onnxruntime."""


_selection_options = [
    click.option("--include", multiple=True, help="Compress only weights/nodes matching these globs."),
    click.option("--exclude", multiple=True, help="Leave weights/nodes matching these globs in float."),
    click.option("--keep", multiple=True, default=("auto",), show_default=True,
                 help="Keep these layers dense at 8 bits: 'first', 'last' or globs (comma-separated); "
                      "'auto' is first,last with --prune/--bits and none with a budget; 'none' keeps none."),
    click.option("--min-params", type=int, default=64, show_default=True,
                 help="Weights with fewer values stay float."),
    click.option("--embeddings", is_flag=True, help="Also compress float tables read by Gather (embeddings)."),
]


def _with_selection(func):
    for option in reversed(_selection_options):
        func = option(func)
    return func


def _selection(include, exclude, keep, min_params, embeddings=False):
    from ..errors import OptionError
    from ..graph.layers import Selection
    if min_params < 0:
        raise OptionError(f"--min-params must be >= 0, got {min_params}")
    keep = tuple(k for k in _split(keep) if k != "none")
    return Selection(_split(include), _split(exclude), keep, min_params, embeddings)


def _method_config(prune, bits, prune_mode, keep_survivors, rate, size_kb, min_bits, max_bits, pow2,
                   objective, max_drop, data_path, granularity="auto"):
    """The config of the one mode the options ask for: OPQ, budget, or accuracy search."""
    from ..errors import OptionError
    from ..methods.annc import AnncConfig
    from ..methods.opq import OpqConfig
    from ..workflows.search import SearchConfig

    modes = [name for name, given in (("--prune/--bits", prune is not None or bits is not None),
                                      ("--rate/--size-kb", rate is not None or size_kb is not None),
                                      ("--max-drop", max_drop is not None)) if given]
    if len(modes) > 1:
        raise OptionError(f"{' and '.join(modes)} are different modes: give one of them")
    if (max_drop is None) != (data_path is None):
        raise OptionError("--max-drop and --data go together")
    if max_drop is not None:
        budget = AnncConfig(rate=4.0, min_bits=min_bits, max_bits=max_bits, pow2=pow2, objective=objective,
                            granularity=granularity)
        return SearchConfig(max_drop=max_drop, data_path=data_path, budget=budget)
    if rate is not None or size_kb is not None:
        return AnncConfig(rate=rate, size_kb=size_kb, min_bits=min_bits, max_bits=max_bits, pow2=pow2,
                          objective=objective, granularity=granularity)
    return OpqConfig(prune=0.0 if prune is None else prune, bits=8.0 if bits is None else bits,
                     prune_mode=prune_mode, keep_survivors=keep_survivors, granularity=granularity)


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
              help="Budget mode: .npz of model inputs to measure each layer's sensitivity on.")
@click.option("--activations", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="int8: also quantize activations (full QDQ model, integer kernels), calibrated on --calib.")
@click.option("--act-calibrate", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="onnxruntime calibrator for the activation ranges.")
@click.option("--act-snr", type=float, default=25.0, show_default=True,
              help="Keep the most harmful activations in float until the output SNR (dB) vs the "
                   "weight-compressed float model reaches this.")
@click.option("--weights-qdq", is_flag=True,
              help="With --activations int8: weights as float -> QuantizeLinear -> DequantizeLinear pairs.")
@click.option("--max-drop", type=float, default=None,
              help="Search the highest rate losing at most this many accuracy points on --data "
                   "(agreement points with the fp32 model when the data has no labels).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False),
              help="With --max-drop: .npz of model inputs (and labels) to measure on.")
@click.option("--prune-mode", type=click.Choice(["laplace", "exact"]), default="laplace", show_default=True,
              help="laplace: OPQ's per-layer ratios from the Laplace fit; exact: global magnitude.")
@click.option("--keep-survivors/--no-keep-survivors", default=True, show_default=True,
              help="Kept weights never round to 0 (the prune ratio asked is the one stored).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "float", "sparse"]), default="qdq",
              show_default=True, help="qdq: int4/int8 + DequantizeLinear; float: dequantized floats; "
                                      "sparse: int8 codes in sparse_initializer storage.")
@click.option("--int4/--no-int4", default=True, show_default=True,
              help="Store layers whose codes fit in 4 bits as int4 (opset 21).")
@click.option("--granularity", type=click.Choice(["auto", "layer", "channel"]), default="auto", show_default=True,
              help="Quantization steps: one per layer (OPQ), one per output channel, or per channel only "
                   "for layers with outlier channels (auto).")
@_with_selection
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Draw the per-layer bits and pruning figure (layers.png) in this folder; needs matplotlib.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (logs stay on stderr).")
@_user_errors("src")
def compress(src, dst, prune, bits, rate, size_kb, min_bits, max_bits, pow2_bits, objective, calib,
             activations, act_calibrate, act_snr, weights_qdq, max_drop, data_path,
             prune_mode, keep_survivors, fmt, int4, granularity, include, exclude, keep, min_params, embeddings,
             report_path,
             plot_dir, quiet, as_json):
    """Prune and quantize the weights of SRC into a new ONNX file.

    Give --prune/--bits for the analytic OPQ solve, or --rate/--size-kb for
    the budget mode, which chooses each layer's sparsity and bit-width.
    """
    from rich.progress import track

    from ..workflows.activations import ActivationConfig
    from ..pipeline.compress import OutputConfig
    from ..workflows.compress import compress_file
    from ..pipeline.report import print_report

    config = _method_config(prune, bits, prune_mode, keep_survivors, rate, size_kb, min_bits, max_bits,
                            pow2_bits, objective, max_drop, data_path, granularity)
    selection = _selection(include, exclude, keep, min_params, embeddings)
    console = _console(quiet)
    progress = (lambda xs: track(xs, description="working", console=console, transient=True))
    act = (ActivationConfig(calibrate=act_calibrate, min_snr_db=act_snr, weights_qdq=weights_qdq)
           if activations == "int8" else None)
    report = compress_file(src, dst, config, selection, OutputConfig(format=fmt, int4=int4),
                           report_path=report_path, progress=None if quiet else progress, calib=calib,
                           activations=act)
    print_report(report, console)
    if "search" in report:
        found = report["search"]
        console.print(f"searched {len(found['evaluations'])} rates: highest within {found['max_drop']:g} "
                      f"{found['metric']} points: storage rate {report['totals']['storage_rate']:.1f}x")
    console.print(f"wrote {dst}")
    if plot_dir:
        from ..workflows.plots import plot_layers
        console.print(f"wrote {plot_layers(report, plot_dir)}")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@_with_selection
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (and the JSON with --json).")
@_user_errors("src")
def inspect(src, include, exclude, keep, min_params, embeddings, as_json, quiet):
    """List the compressible weights of SRC with their Laplace fit."""
    from ..workflows.inspect import inspect_file, print_inspection

    result = inspect_file(src, _selection(include, exclude, keep, min_params, embeddings))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_inspection(result, _console(quiet))


@main.command()
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with lenet5.onnx and its test data (default: the bundled models/).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the compressed models here (default: a temporary folder).")
@_user_errors()
def demo(models_dir, out_dir):
    """Compress the bundled digits CNN at a few settings; compare accuracy with onnxruntime."""
    from ..workflows.demo import print_demo, run_demo

    print_demo(run_demo(models_dir, out_dir), _console())


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help=".npz of training inputs (labels optional: without them, distil from SRC's outputs).")
@click.option("--val", "val_path", type=click.Path(dir_okay=False), help=".npz to report accuracy on each epoch.")
@click.option("--method", type=click.Choice(["masked", "admm", "djpq"]), default="masked", show_default=True,
              help="masked: OPQ's retraining with masks, steps and channel ranges frozen (STE); "
                   "admm: ANNC/progressive ADMM to --rate, then masked retraining; "
                   "djpq: learned bit-widths and channel gates to a --rate BOPs reduction.")
@click.option("--prune", type=float, default=None, help="masked, OPQ plan: global prune ratio.")
@click.option("--bits", type=float, default=None, help="masked, OPQ plan: average bits.")
@click.option("--rate", type=float, default=None,
              help="masked: budget plan's storage rate; admm: the papers' rate 32N/sum(bits x nonzero); "
                   "djpq: BOPs reduction.")
@click.option("--pow2-bits", is_flag=True, help="djpq: restrict learned bit-widths to powers of two.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Training epochs (admm: ADMM epochs).")
@click.option("--retrain-epochs", type=int, default=10, show_default=True,
              help="admm/djpq: masked retraining epochs after the final projection / the learned bits and channels.")
@click.option("--rho", type=float, default=1e-3, show_default=True, help="admm: initial penalty (x1.3 per epoch).")
@click.option("--lr", type=float, default=1e-2, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Checkpoint file, written after every epoch (default: DST.ckpt).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of a killed run.")
@_with_selection
@click.option("--int4/--no-int4", default=True, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (logs stay on stderr).")
@_user_errors("src")
def finetune(src, dst, data_path, val_path, method, prune, bits, rate, pow2_bits, epochs, retrain_epochs, rho, lr,
             batch, optimizer, checkpoint, resume, include, exclude, keep, min_params, embeddings, int4, report_path,
             quiet, as_json):
    """Fine-tune SRC in PyTorch under a compression plan, then rewrite it like compress."""
    from ..errors import OptionError
    from ..finetune.cli import run_finetune

    if method in ("admm", "djpq"):
        from ..finetune.admm import AdmmConfig
        from ..finetune.djpq import DjpqConfig
        if rate is None or prune is not None or bits is not None:
            raise OptionError(f"--method {method} takes --rate, not --prune/--bits")
        config = (AdmmConfig(rate=rate, epochs=epochs, retrain_epochs=retrain_epochs, rho=rho) if method == "admm"
                  else DjpqConfig(rate=rate, epochs=epochs, retrain_epochs=retrain_epochs, pow2=pow2_bits))
    else:
        config = _method_config(prune, bits, "laplace", True, rate, None, 2, 8, False, "size", None, None)
    report = run_finetune(src, dst, data_path, val_path, method, config,
                          _selection(include, exclude, keep, min_params, embeddings),
                          dict(epochs=epochs, lr=lr, batch=batch, optimizer=optimizer,
                               checkpoint=checkpoint or f"{dst}.ckpt", resume=resume),
                          int4, report_path, _console(quiet))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))


def _progress(console, description: str):
    """A progress-bar wrapper `(iterable, total) -> iterable` for the API's `progress` arguments
    (None when stderr is not a terminal: no bar in logs and pipes)."""
    from rich.progress import track

    if not console.is_terminal or console.quiet:
        return None
    return lambda items, total: track(items, total=total, description=description, console=console,
                                      transient=True)


def _write_json(text: str, path, near, console) -> None:
    """Write `text` to the file `path`, or to stdout when `path` is '-'."""
    from ..graph.io import check_output_path, write_text_atomic

    if str(path) == "-":
        click.echo(text, nl=False)
        return
    write_text_atomic(check_output_path(near, path), text)
    console.print(f"wrote {path}")


@main.command("eval")
@click.argument("ref", type=click.Path(dir_okay=False))
@click.argument("cand", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True,
              help=".npz with one array per model input (and labels), or module:function returning or "
                   "yielding feed dicts {input name: batch array, 'labels': optional}.")
@click.option("--labels", "labels_key", default="labels", show_default=True,
              help="Name of the labels array in the .npz (or key in each fed dict).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the figures as JSON ('-': on stdout).")
@click.option("--max-drop", type=float, default=None,
              help="Validate: exit with status 1 if CAND loses more than this many top-1 accuracy points "
                   "(agreement points without labels).")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per run (and in the timed batch).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="onnxruntime intra-op threads for both models (0: onnxruntime's default).")
@click.option("--runs", type=int, default=50, show_default=True,
              help="Timed runs of one batch per model, interleaved; 0 skips timing.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs before timing.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@_user_errors("ref", "cand")
def eval_command(ref, cand, data, labels_key, json_path, max_drop, batch, threads, runs, warmup, quiet):
    """Compare CAND with REF in onnxruntime: accuracy, top-1 agreement, output SNR, latency, size."""
    from ..workflows.evaluate import EvalConfig, check_drop, evaluate_files, print_evaluation, to_json

    config = EvalConfig(batch=batch, threads=threads, runs=runs, warmup=warmup, labels_key=labels_key)
    if max_drop is not None and not max_drop >= 0:
        from ..errors import OptionError
        raise OptionError(f"--max-drop must be >= 0 points, got {max_drop}")
    console = _console(quiet)
    result = evaluate_files(ref, cand, data, config, _progress(console, "evaluating"))
    print_evaluation(result, console)
    if json_path:
        _write_json(to_json(result), json_path, cand, console)
    if max_drop is not None:
        check_drop(result, max_drop)


def _floats(text: str, option: str) -> tuple[float, ...]:
    from ..errors import OptionError
    try:
        return tuple(float(v) for v in _split((text,)))
    except ValueError:
        raise OptionError(f"{option} wants comma-separated numbers, got {text!r}") from None


@main.command("sweep")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True,
              help=".npz of model inputs (and labels), or module:function yielding feed dicts.")
@click.option("--prune", "prunes", default="0,0.5,0.8", show_default=True, help="Prune ratios, comma-separated.")
@click.option("--bits", "bits", default="8,4,3", show_default=True, help="Bit-widths, comma-separated.")
@click.option("--jobs", type=int, default=None, help="Worker processes [default: min(2, CPUs)].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="sweep", show_default=True,
              help="Folder for sweep.csv, sweep.json, the figures and the compressed models.")
@click.option("--labels", "labels_key", default="labels", show_default=True, help="Name of the labels array.")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per onnxruntime run.")
@click.option("--plot-point", default=None,
              help="PRUNE,BITS of the per-layer figure [default: the highest rate within --plot-drop of fp32].")
@click.option("--plot-drop", type=float, default=1.0, show_default=True,
              help="Points of accuracy (agreement) the default per-layer figure's point may lose.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Draw the PNG figures (matplotlib).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json's content on stdout.")
@_user_errors("src")
def sweep_command(src, data, prunes, bits, jobs, out_dir, labels_key, batch, plot_point, plot_drop, plot, quiet,
                  as_json):
    """Compress SRC at every --prune x --bits point, measure each on --data, plot the trade-off."""
    from ..workflows.sweep import SweepConfig, default_jobs, parse_point, plot_sweep_files, print_sweep, sweep

    from pathlib import Path

    config = SweepConfig(prunes=_floats(prunes, "--prune"), bits=_floats(bits, "--bits"),
                         jobs=default_jobs() if jobs is None else jobs, batch=batch, labels_key=labels_key,
                         plot_point=parse_point(plot_point) if plot_point else None, plot_drop=plot_drop)
    if plot:
        from ..workflows.plots import require_matplotlib
        require_matplotlib()
    console = _console(quiet)
    summary = sweep(src, data, out_dir, config, _progress(console, f"{len(config.grid())} points"))
    print_sweep(summary, console)
    written = ["sweep.csv", "sweep.json"]
    if plot:
        written += [p.name for p in plot_sweep_files(summary, Path(out_dir))]
    console.print(f"wrote {', '.join(written)} and the models in {out_dir}")
    if as_json:
        from ..workflows.evaluate import to_json
        click.echo(to_json(summary), nl=False)


@main.command("sensitivity")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True,
              help=".npz of model inputs (and labels), or module:function yielding feed dicts.")
@click.option("--prune", type=float, default=0.5, show_default=True, help="Prune ratio applied to each layer alone.")
@click.option("--bits", type=float, default=4.0, show_default=True, help="Bits applied to each layer alone.")
@click.option("--rank-by", type=click.Choice(["snr", "drop"]), default="snr", show_default=True,
              help="snr: lowest output SNR first; drop: largest accuracy (agreement) drop first.")
@click.option("--min-params", type=int, default=64, show_default=True, help="Weights with fewer values are skipped.")
@click.option("--labels", "labels_key", default="labels", show_default=True, help="Name of the labels array.")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per onnxruntime run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the ranked layers as JSON ('-': on stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw the ranked layers as a PNG.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@_user_errors("src")
def sensitivity_command(src, data, prune, bits, rank_by, min_params, labels_key, batch, json_path, plot_path,
                        quiet):
    """Compress one layer of SRC at a time and rank the layers by the damage each does alone."""
    from ..workflows.evaluate import to_json
    from ..workflows.sensitivity import SensitivityConfig, measure_sensitivity, print_sensitivity

    config = SensitivityConfig(prune=prune, bits=bits, rank_by=rank_by, min_params=min_params, batch=batch,
                               labels_key=labels_key)
    if plot_path:
        from ..workflows.plots import require_matplotlib
        require_matplotlib()
    console = _console(quiet)
    result = measure_sensitivity(src, data, config, _progress(console, "layers"))
    print_sensitivity(result, console)
    if json_path:
        _write_json(to_json(result), json_path, src, console)
    if plot_path:
        from ..workflows.plots import plot_sensitivity
        console.print(f"wrote {plot_sensitivity(result, plot_path)}")


if __name__ == "__main__":
    main()
