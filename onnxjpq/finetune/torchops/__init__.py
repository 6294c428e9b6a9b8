"""Torch implementations of ONNX ops for the bridge: one registry (`OPS`), filled by the family modules."""

from . import (activations, cast, control, conv, elementwise, indexing, linalg, norm, pad, pool,  # noqa: F401
               recurrent, reduce, resize, shape)  # (each module registers its ops)
from .graph import Graph, compile_graph, model_opset
from .registry import OPS, Node, OpSpec, register

__all__ = ["OPS", "Graph", "Node", "OpSpec", "compile_graph", "model_opset", "register"]
