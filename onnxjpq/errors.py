"""Error types and the command line's exit statuses.

`OnnxjpqError` and its subclasses are explained in one line. The CLI prints
`error: <message>` on stderr and exits with the error's `exit_code`: 2 for the
user's input or options (bad file, bad option, unwritable output), 1 for a
compressed model that failed the validation asked for (`ValidationError`).
Any other exception is a bug in onnxjpq and keeps its traceback.
"""

EXIT_OK = 0
EXIT_VALIDATION = 1
EXIT_INPUT = 2


class OnnxjpqError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = EXIT_INPUT


class ModelError(OnnxjpqError):
    """The ONNX file cannot be read, or has nothing onnxjpq can compress."""


class OptionError(OnnxjpqError):
    """An option is out of range or inconsistent with another."""


class BudgetUnreachable(OptionError):
    """A size budget below the smallest allocation the solver can make (`need_bits`)."""

    def __init__(self, message: str, need_bits: float):
        super().__init__(message)
        self.need_bits = need_bits


class DataError(OnnxjpqError):
    """A data file does not match the model's inputs."""


class OutputError(OnnxjpqError):
    """An output file cannot be written (read-only folder, disk full)."""


class ValidationError(OnnxjpqError):
    """The compressed model does not meet the accuracy the user asked for (exit status 1)."""

    exit_code = EXIT_VALIDATION


def first_line(exc: BaseException) -> str:
    """An exception's message cut to one line (its type when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
