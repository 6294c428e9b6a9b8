"""onnxjpq: joint pruning and quantization of ONNX models.

Public API::

    from onnxjpq import compress_file, OpqConfig, Selection
    report = compress_file("model.onnx", "model.small.onnx", OpqConfig(prune=0.5, bits=4))
"""

from ._version import __version__

from onnx_graphsurgeon.logger import G_LOGGER  # noqa: E402

# graphsurgeon's warnings (duplicate node names in exporters' graphs, a missing
# `colored` module) are noise to users; onnxjpq reports what it skips itself.
G_LOGGER.severity = G_LOGGER.ERROR

from .pipeline.compress import OutputConfig, compress_model  # noqa: E402
from .workflows.compress import compress_file  # noqa: E402
from .errors import DataError, ModelError, OnnxjpqError, OptionError  # noqa: E402
from .graph.io import load_model, save_model  # noqa: E402
from .graph.layers import Selection, find_layers  # noqa: E402
from .methods.opq import OpqConfig, solve_opq  # noqa: E402
from .core.plan import CompressionPlan, LayerPlan  # noqa: E402

__all__ = [
    "CompressionPlan", "DataError", "LayerPlan", "ModelError", "OnnxjpqError", "OpqConfig",
    "OptionError", "OutputConfig", "Selection", "__version__", "compress_file", "compress_model",
    "find_layers", "load_model", "save_model", "solve_opq",
]
