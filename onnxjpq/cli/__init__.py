"""Command line: `onnxjpq compress | inspect | demo | finetune | eval | sweep | sensitivity | unpack`.

The commands parse options, build configs and call the API. A user error
(`OnnxjpqError`, an unwritable output) prints one `error: ...` line on stderr
and exits with status 2; a failed validation (`ValidationError`) with 1.
Logs, tables and progress go to stderr; stdout carries only the JSON that
`--json` asks for.
"""

from . import compress, demo, evaluate, finetune, inspect, sensitivity, sweep, unpack  # noqa: F401  (register the verbs)
from .common import user_errors
from .group import main

__all__ = ["main", "user_errors"]
