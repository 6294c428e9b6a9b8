"""`onnxjpq demo`."""

from __future__ import annotations


import click


from .common import make_console, user_errors
from .group import main


@main.command()
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=None,
              help="Folder with lenet5.onnx and its test data (default: the bundled models/).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the compressed models here (default: a temporary folder).")
@user_errors()
def demo(models_dir, out_dir):
    """Compress the bundled digits CNN at a few settings; compare accuracy with onnxruntime."""
    from ..workflows.demo import print_demo, run_demo

    print_demo(run_demo(models_dir, out_dir), make_console())
