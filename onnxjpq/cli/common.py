"""What every verb shares: one-line user errors with exit statuses, the console, progress, JSON output."""

from __future__ import annotations

import sys
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


def user_errors(*model_args: str):
    """Turn the errors a command may meet into one `error: ...` line and an exit status.

    OnnxjpqError: its message, status `exit_code` (2, or 1 for a failed validation).
    OSError (a read-only folder, a full disk): the file and the reason, status 2.
    Any other exception is blamed on an input model named by `model_args` only
    when that input itself fails validation (`_input_fault`: onnx.checker,
    onnxruntime, supported opsets and domains), with the reason it fails; on a
    valid input it is our bug and keeps its traceback.
    """
    def decorate(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except OnnxjpqError as exc:
                _fail(str(exc), exc.exit_code)
            except OSError as exc:
                reason = exc.strerror or first_line(exc)
                _fail(f"{exc.filename}: {reason}" if exc.filename else f"cannot write the output: {reason}", 2)
            except Exception:
                for name in model_args:
                    fault = _input_fault(kwargs[name]) if kwargs.get(name) else None
                    if fault is not None:
                        _fail(str(fault), 2)
                raise
        return wrapper
    return decorate


def make_console(quiet: bool = False):
    import shutil

    from rich.console import Console
    return Console(stderr=True, quiet=quiet, width=max(shutil.get_terminal_size((120, 24)).columns, 100))


def split_commas(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def progress_bar(console, description: str):
    """A progress-bar wrapper `(iterable, total) -> iterable` for the API's `progress` arguments
    (None when stderr is not a terminal: no bar in logs and pipes)."""
    from rich.progress import track

    if not console.is_terminal or console.quiet:
        return None
    return lambda items, total: track(items, total=total, description=description, console=console,
                                      transient=True)


def write_json(text: str, path, near, console) -> None:
    """Write `text` to the file `path`, or to stdout when `path` is '-'."""
    from ..graph.io import check_output_path, write_text_atomic

    if str(path) == "-":
        click.echo(text, nl=False)
        return
    write_text_atomic(check_output_path(near, path), text)
    console.print(f"wrote {path}")


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    from ..errors import OptionError
    try:
        return tuple(float(v) for v in split_commas((text,)))
    except ValueError:
        raise OptionError(f"{option} wants comma-separated numbers, got {text!r}") from None
