"""What every verb shares: one-line user errors with exit statuses, the console, progress, JSON output."""

from __future__ import annotations

import sys
import warnings
from functools import wraps

import click

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


def _from_onnxruntime(exc: BaseException) -> bool:
    """An error onnxruntime raised (runtime.sessions.ORT_ERRORS; compared by module so that
    the CLI imports no onnxruntime before it needs it)."""
    return type(exc).__module__.startswith("onnxruntime.capi")


def user_errors(*model_args: str):
    """Turn the errors a command may meet into one `error: ...` line and an exit status.

    OnnxjpqError: its message, status `exit_code` (2, or 1 for a failed validation).
    OSError (a read-only folder, a full disk): the file and the reason, status 2.
    KeyboardInterrupt (Ctrl-C): `error: interrupted` (and what the interrupt carries), status
    130; the temporary files are gone by then (written through `io.atomic_file`, removed on
    any exception). With `quiet` (-q) Python warnings (numpy overflow, onnx's notes on
    external data) are not shown.
    onnxruntime failing to run a valid model (inputs it does not accept: shapes the graph
    cannot broadcast): its first line, status 2.
    Any other exception is blamed on an input model named by `model_args` only
    when that input itself fails validation (`_input_fault`: onnx.checker,
    onnxruntime, supported opsets and domains), with the reason it fails; on a
    valid input it is our bug and keeps its traceback.
    """
    def decorate(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            try:
                with warnings.catch_warnings():
                    if kwargs.get("quiet"):
                        warnings.simplefilter("ignore")
                    return func(*args, **kwargs)
            except KeyboardInterrupt as exc:
                _fail(f"interrupted{f' ({exc})' if str(exc) else ''}", 130)
            except OnnxjpqError as exc:
                _fail(str(exc), exc.exit_code)
            except OSError as exc:
                reason = exc.strerror or first_line(exc)
                _fail(f"{exc.filename}: {reason}" if exc.filename else f"cannot write the output: {reason}", 2)
            except Exception as exc:
                for name in model_args:
                    fault = _input_fault(kwargs[name]) if kwargs.get(name) else None
                    if fault is not None:
                        _fail(str(fault), 2)
                if _from_onnxruntime(exc):
                    _fail(f"onnxruntime cannot run the model on these inputs: {first_line(exc)}", 2)
                raise
        return wrapper
    return decorate


def make_console(quiet: bool = False):
    import shutil

    from rich.console import Console
    return Console(stderr=True, quiet=quiet, width=max(shutil.get_terminal_size((120, 24)).columns, 100))


def split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


PROGRESS_AFTER_S = 2.0  # plain progress lines start once work has run this long: quick runs stay quiet


def progress_bar(console, description: str):
    """A progress wrapper `(iterable, total=None) -> iterable` for the API's `progress` arguments:
    a transient bar on a terminal; on any other stderr (a log, a pipe) plain lines
    (`description: 3/10`, one per item up to 10 items, else about one per 10 %) once the
    work has run `PROGRESS_AFTER_S`; None when the console is quiet (-q)."""
    if console.quiet:
        return None
    if console.is_terminal:
        from rich.progress import track

        return lambda items, total=None: track(items, total=_total(items, total), description=description,
                                               console=console, transient=True)
    return lambda items, total=None: _progress_lines(items, _total(items, total), description, console)


def _total(items, total):
    return total if total is not None else (len(items) if hasattr(items, "__len__") else None)


def _progress_lines(items, total, description: str, console):
    import time

    every, start = (max(1, -(-total // 10)) if total else 1), time.monotonic()
    for done, item in enumerate(items, 1):
        yield item  # the line comes once the caller has finished with the item
        if (done % every == 0 or done == total) and time.monotonic() - start >= PROGRESS_AFTER_S:
            console.print(f"{description}: {done}/{total}" if total else f"{description}: {done}",
                          markup=False, highlight=False)


def progress_log(console):
    """A callable printing one progress line (the accuracy search's evaluations), on any
    stderr once `PROGRESS_AFTER_S` have passed since it was made; None when quiet (-q)."""
    import time

    if console.quiet:
        return None
    start = time.monotonic()

    def log(line: str) -> None:
        if time.monotonic() - start >= PROGRESS_AFTER_S:
            console.print(line, markup=False, highlight=False)
    return log


def write_json(text: str, path, near, console) -> None:
    """Write `text` to the file `path`, or to stdout when `path` is '-'."""
    from ..graph.io import check_output_path, write_text_atomic

    if str(path) == "-":
        click.echo(text, nl=False)
        return
    write_text_atomic(check_output_path(near, path), text)
    console.print(f"wrote {path}")


def check_figure(path, name: str, inputs, outputs, label: str = "--plot") -> None:
    """Before any work: matplotlib is there, and the figure `workflows.plots` will write (`path`
    when it ends in .png, else `path`/`name`, the folder created) aliases no input or other
    output and can be written (`outputs.check_outputs`)."""
    from pathlib import Path

    from ..graph.outputs import check_outputs
    from ..workflows.plots import require_matplotlib

    require_matplotlib()
    if Path(path).suffix.lower() == ".png":
        check_outputs(inputs, [*outputs, (f"{label} figure", path)])
    else:
        check_outputs(inputs, [*outputs, (f"{label} figure", Path(path) / name)], folders=[(f"{label} folder", path)])


class undo_on_failure:
    """Remove the model (`io.remove_model`) and files a run wrote if the `with` block fails
    (a figure drawn after them), so a failed run leaves nothing behind."""

    def __init__(self, model=None, *files):
        self.model, self.files = model, [f for f in files if f is not None and str(f) != "-"]

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is not None:
            from pathlib import Path

            from ..graph.io import remove_model
            if self.model is not None:
                remove_model(self.model)
            for f in self.files:
                Path(f).unlink(missing_ok=True)
        return False


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    from ..errors import OptionError
    try:
        return tuple(float(v) for v in split_commas((text,)))
    except ValueError:
        raise OptionError(f"{option} wants comma-separated numbers, got {text!r}") from None


def at_most_cores(value: int, option: str, console) -> int:
    """`value`, or the number of cores here when it asks for more (warning that it did)."""
    from ..runtime.sessions import cpu_cores

    cores = cpu_cores()
    if value > cores:
        console.print(f"warning: {option} {value} is more than the {cores} cores here; using {cores}")
        return cores
    return value


def given_options(**options: str) -> list[str]:
    """The flags (values of `options`, keyed by parameter name) the user gave on the command line,
    as opposed to their defaults."""
    ctx = click.get_current_context()
    return [flag for name, flag in options.items()
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
