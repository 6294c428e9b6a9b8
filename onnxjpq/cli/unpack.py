"""`onnxjpq unpack`."""

from __future__ import annotations

import click

from .common import make_console, user_errors
from .group import main


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False), help="Output ONNX file.")
@click.option("--format", "fmt", type=click.Choice(["float", "qdq"]), default="float", show_default=True,
              help="float: the decoded weights as float32 (the values onnxruntime folds at load); "
                   "qdq: their integer codes behind DequantizeLinear, as `compress --format qdq` writes them.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@user_errors("src")
def unpack(src, dst, fmt, quiet):
    """Turn SRC, written by `compress --format packed`, into a model with float or QDQ weights."""
    from ..workflows.unpack import unpack_file

    s = unpack_file(src, dst, fmt)
    make_console(quiet).print(f"unpacked {s['weights']} weights as {fmt}: {s['bytes_in']:,} -> {s['bytes_out']:,} "
                              f"bytes\nwrote {dst}")
