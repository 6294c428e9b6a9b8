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


class OneLineUsageError(click.UsageError):
    """click's usage error as the one `error: ...` line every other error is."""

    def show(self, file=None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message().rstrip('.')}{where}", file=file, err=file is None)


def _one_line(error: click.UsageError) -> OneLineUsageError:
    if isinstance(error, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return error  # a bare `onnxjpq` shows the help, as before
    return OneLineUsageError(error.format_message(), error.ctx)


class Group(click.Group):
    """The command group, with usage errors (a bad option, a folder where a file goes) on one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _one_line(error) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="onnxjpq")
def main():
    """Prune and quantize ONNX models (OPQ), and check them with onnxruntime."""
