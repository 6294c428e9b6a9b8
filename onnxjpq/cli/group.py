"""The `onnxjpq` command group and its exit statuses."""

from __future__ import annotations


import click

from .._version import __version__


EXIT_CODES = """\b
Exit status:
  0  success
  1  a compressed model failed the validation asked for
     (compress --max-drop, eval --max-drop)
  2  bad input or usage: unreadable or unsupported model, bad
     option or data file, output that cannot be written
     or that would overwrite an input or another output
  130  interrupted (Ctrl-C); temporary files are removed
Errors are one line on stderr ("error: ..."). Logs, tables and
progress go to stderr; with --json the JSON alone goes to stdout."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="onnxjpq")
def main():
    """Prune and quantize ONNX models (OPQ), and check them with onnxruntime."""
