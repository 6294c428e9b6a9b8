"""`onnxjpq sweep`."""

from __future__ import annotations


import click


from .common import at_most_cores, make_console, parse_floats, progress_bar, user_errors
from .group import main


@main.command("sweep")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True,
              help=".npz of model inputs (and labels), or module:function yielding feed dicts.")
@click.option("--prune", "prunes", default="0,0.5,0.8", show_default=True, help="Prune ratios, comma-separated.")
@click.option("--bits", "bits", default="8,4,3", show_default=True, help="Bit-widths, comma-separated.")
@click.option("--jobs", type=int, default=None, help="Worker processes [default: min(2, CPUs)].")
@click.option("--out", "out_dir", type=click.Path(), default="sweep", show_default=True,
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
@user_errors("src")
def sweep_command(src, data, prunes, bits, jobs, out_dir, labels_key, batch, plot_point, plot_drop, plot, quiet,
                  as_json):
    """Compress SRC at every --prune x --bits point, measure each on --data, plot the trade-off."""
    from ..workflows.sweep import SweepConfig, default_jobs, parse_point, plot_sweep_files, print_sweep, sweep

    from pathlib import Path

    console = make_console(quiet)
    if jobs is not None:
        jobs = at_most_cores(jobs, "--jobs", console)
    config = SweepConfig(prunes=parse_floats(prunes, "--prune"), bits=parse_floats(bits, "--bits"),
                         jobs=default_jobs() if jobs is None else jobs, batch=batch, labels_key=labels_key,
                         plot_point=parse_point(plot_point) if plot_point else None, plot_drop=plot_drop)
    if plot:
        from ..workflows.plots import require_matplotlib
        require_matplotlib()
    summary = sweep(src, data, out_dir, config, progress_bar(console, "sweep points"))
    print_sweep(summary, console)
    written = ["sweep.csv", "sweep.json"]
    if plot:
        written += [p.name for p in plot_sweep_files(summary, Path(out_dir))]
    console.print(f"wrote {', '.join(written)} and the models in {out_dir}")
    if as_json:
        from ..workflows.evaluate import to_json
        click.echo(to_json(summary), nl=False)
