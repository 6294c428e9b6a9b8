"""`onnxjpq sensitivity`."""

from __future__ import annotations


import click


from .common import check_figure, make_console, progress_bar, undo_on_failure, user_errors, write_json
from .group import main


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
@user_errors("src")
def sensitivity_command(src, data, prune, bits, rank_by, min_params, labels_key, batch, json_path, plot_path,
                        quiet):
    """Compress one layer of SRC at a time and rank the layers by the damage each does alone."""
    from ..workflows.evaluate import to_json
    from ..workflows.sensitivity import SensitivityConfig, measure_sensitivity, print_sensitivity

    config = SensitivityConfig(prune=prune, bits=bits, rank_by=rank_by, min_params=min_params, batch=batch,
                               labels_key=labels_key)
    from ..graph.io import model_inputs
    from ..graph.outputs import check_outputs

    inputs, outputs = [*model_inputs(src), ("the --data file", data)], [("--json file", json_path)]
    check_outputs(inputs, outputs)  # before any work
    if plot_path:
        check_figure(plot_path, "sensitivity.png", inputs, outputs)
    console = make_console(quiet)
    result = measure_sensitivity(src, data, config, progress_bar(console, "measuring layers"))
    print_sensitivity(result, console)
    if json_path:
        write_json(to_json(result), json_path, src, console)
    if plot_path:
        from ..workflows.plots import plot_sensitivity
        with undo_on_failure(None, json_path):
            console.print(f"wrote {plot_sensitivity(result, plot_path)}")


if __name__ == "__main__":
    main()
