"""`onnxjpq demo`."""

from __future__ import annotations


import click


from .common import make_console, user_errors
from .group import main


@main.command()
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with lenet5.onnx and its test data (default: the bundled models/).")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Keep the compressed models here (default: a temporary folder).")
@user_errors()
def demo(models_dir, out_dir):
    """Compress the bundled digits CNN at a few settings; compare accuracy with onnxruntime."""
    from pathlib import Path

    from ..graph.io import model_inputs
    from ..graph.outputs import check_outputs
    from ..workflows.demo import DEMO_SETTINGS, bundled_models_dir, print_demo, run_demo

    if out_dir:  # the compressed models must not replace the bundled ones
        models = Path(models_dir) if models_dir else bundled_models_dir()
        check_outputs([*model_inputs(models / "lenet5.onnx"), ("the test data", models / "lenet5_test.npz")],
                      [("demo output", Path(out_dir) / f"lenet5_{i}.onnx") for i in range(len(DEMO_SETTINGS))],
                      folders=[("--out folder", out_dir)])
    print_demo(run_demo(models_dir, out_dir), make_console())
