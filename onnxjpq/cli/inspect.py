"""`onnxjpq inspect`."""

from __future__ import annotations

import json

import click


from .common import make_console, user_errors
from .group import main
from .options import selection_from, with_selection


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@with_selection
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (and the JSON with --json).")
@user_errors("src")
def inspect(src, include, exclude, keep, min_params, embeddings, as_json, quiet):
    """List the compressible weights of SRC with their Laplace fit."""
    from ..workflows.inspect import inspect_file, print_inspection

    result = inspect_file(src, selection_from(include, exclude, keep, min_params, embeddings))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_inspection(result, make_console(quiet))
