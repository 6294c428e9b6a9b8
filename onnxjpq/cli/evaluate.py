"""`onnxjpq eval`."""

from __future__ import annotations


import click


from .common import at_most_cores, make_console, progress_bar, user_errors, write_json
from .group import main

METRIC_CHOICES = ["auto", "accuracy", "agreement", "cosine", "snr"]


@main.command("eval")
@click.argument("ref", type=click.Path(dir_okay=False))
@click.argument("cand", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True,
              help=".npz with one array per model input (and labels), or module:function returning or "
                   "yielding feed dicts {input name: batch array, 'labels': optional}.")
@click.option("--labels", "labels_key", default="labels", show_default=True,
              help="Name of the labels array in the .npz (or key in each fed dict); by default also label, y, "
                   "targets, target or labels_true; 'none' uses no labels.")
@click.option("--metric", type=click.Choice(METRIC_CHOICES), default="auto", show_default=True,
              help="Fidelity measure of the headline and --max-drop: auto picks accuracy/agreement for class "
                   "scores, cosine for embeddings and feature maps, snr for one value per sample.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the figures as JSON ('-': on stdout).")
@click.option("--max-drop", type=float, default=None,
              help="Validate: exit with status 1 if CAND loses more than this many points of the fidelity "
                   "measure (top-1 accuracy with labels, agreement, 100 x cosine, or output-energy points).")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per run (and in the timed batch).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="onnxruntime intra-op threads for both models (0: onnxruntime's default; at most the cores).")
@click.option("--runs", type=int, default=50, show_default=True,
              help="Timed runs of one batch per model, interleaved; 0 skips timing.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs before timing.")
@click.option("--debug", is_flag=True, help="With a module:function --data that fails: also print its traceback.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@user_errors("ref", "cand")
def eval_command(ref, cand, data, labels_key, metric, json_path, max_drop, batch, threads, runs, warmup, debug,
                 quiet):
    """Compare CAND with REF in onnxruntime: accuracy, top-1 agreement, output SNR, latency, size."""
    from ..errors import DataError, OptionError
    from ..workflows.evaluate import EvalConfig, check_drop, evaluate_files, print_evaluation, to_json

    console = make_console(quiet)
    threads = at_most_cores(threads, "--threads", console)
    config = EvalConfig(batch=batch, threads=threads, runs=runs, warmup=warmup, labels_key=labels_key,
                        metric=metric)
    if max_drop is not None and not max_drop >= 0:
        raise OptionError(f"--max-drop must be >= 0 points, got {max_drop}")
    if json_path and str(json_path) != "-":  # before the evaluation, not after it
        from ..graph.io import model_inputs
        from ..graph.outputs import check_outputs
        check_outputs([*model_inputs(ref, label="the reference model"),
                       *model_inputs(cand, label="the candidate model"), ("the --data file", data)],
                      [("--json file", json_path)])
    try:
        result = evaluate_files(ref, cand, data, config, progress_bar(console, "evaluating batches"))
    except DataError as exc:
        if debug and exc.__cause__ is not None:
            import traceback
            traceback.print_exception(exc.__cause__)
        raise
    print_evaluation(result, console)
    if json_path:
        write_json(to_json(result), json_path, cand, console)
    if max_drop is not None:
        check_drop(result, max_drop)
