"""Error types.

`OnnxjpqError` and its subclasses are the user's fault (bad file, bad option):
the CLI prints their one-line message and exits with status 2. Any other
exception is a bug in onnxjpq and keeps its traceback.
"""


class OnnxjpqError(Exception):
    """A problem with the user's input, explained in one line."""


class ModelError(OnnxjpqError):
    """The ONNX file cannot be read, or has nothing onnxjpq can compress."""


class OptionError(OnnxjpqError):
    """An option is out of range or inconsistent with another."""


class DataError(OnnxjpqError):
    """A data file does not match the model's inputs."""
