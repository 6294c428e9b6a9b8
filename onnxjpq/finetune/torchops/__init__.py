"""Torch implementations of ONNX ops for the bridge: one registry (`OPS`), filled by the family modules."""

from . import (activations, attention, cast, control, conv, detection, elementwise,  # noqa: F401
               indexing, linalg, norm, pad, pool, quantize, recurrent, reduce, resize, sampling,
               shape, spectral)  # (each module registers its ops)
from .graph import Graph, compile_graph, model_opset
from .registry import OPS, Node, OpSpec, register

__all__ = ["OPS", "Graph", "Node", "OpSpec", "compile_graph", "model_opset", "register"]
