"""Opset requirements of the rewrites, upgrading a model to meet them, and refusing
models onnx or onnxruntime cannot handle (too new, too old, unknown operator domains)."""

from __future__ import annotations

import onnx
from onnx import version_converter

from ..errors import ModelError
from .io import proto_graphs

ORT_MIN_OPSET = 7  # onnxruntime runs ai.onnx opset 7 and newer
# Operator domains onnxruntime's CPU build knows; a model's own functions add theirs.
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                           "ai.onnx.training", "ai.onnx.preview.training", "com.ms.internal.nhwc"})
QDQ_MIN_OPSET = 10  # DequantizeLinear with int8
INT4_MIN_OPSET = 21  # int4 / int16 DequantizeLinear inputs
INT4_MIN_IR = 10
MIN_IR = 3  # the oldest IR version onnx reads


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto | None:
    """`model` converted to `opset`, or None if onnx's converter cannot do it."""
    if default_opset(model) >= opset:
        return model
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception:  # the converter raises many types; any failure means "cannot"
        return None
    return converted


def check_supported(model: onnx.ModelProto, name: str = "the model", old_opset_ok: bool = False) -> None:
    """Refuse, with a one-line ModelError, a model onnx or onnxruntime cannot read or run:
    an IR version or ai.onnx opset newer than this onnx knows, an opset older than
    onnxruntime runs (unless `old_opset_ok`: the QDQ rewrite upgrades it), or a node in an
    operator domain neither knows."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{name}: IR version {model.ir_version} is newer than this onnx reads ({onnx.IR_VERSION})")
    if model.ir_version < MIN_IR:
        raise ModelError(f"{name}: IR version {model.ir_version} is not a valid one ({MIN_IR} or newer)")
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelError(f"{name}: ai.onnx opset {entry.version} is newer than onnx and onnxruntime "
                             f"support ({newest})")
        if entry.domain in ("", "ai.onnx") and entry.version < ORT_MIN_OPSET and not old_opset_ok:
            raise ModelError(f"{name}: ai.onnx opset {entry.version} is older than onnxruntime runs "
                             f"({ORT_MIN_OPSET} and newer); convert it with onnx.version_converter")
    known = KNOWN_DOMAINS | {f.domain for f in model.functions}
    for graph in proto_graphs(model.graph):
        _check_strings(graph, name)
        for node in graph.node:
            if node.domain not in known:
                raise ModelError(f"{name}: node {node.name or node.op_type!r} is {node.domain}:{node.op_type}, "
                                 "an operator domain onnxruntime does not know (custom operators are not supported)")
        for tensor in graph.initializer:
            if tensor.data_type not in _DATA_TYPES:
                raise ModelError(f"{name}: initializer {tensor.name!r} has data type {tensor.data_type}, "
                                 "which ONNX does not define")


_DATA_TYPES = frozenset(v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED)


def _check_strings(graph: onnx.GraphProto, name: str) -> None:
    """Every name must be valid UTF-8 (protobuf lets broken bytes through as lone surrogates)."""
    texts = [graph.name, *(t.name for t in graph.initializer), *(v.name for v in (*graph.input, *graph.output))]
    for node in graph.node:
        texts += [node.name, node.op_type, node.domain, *node.input, *node.output]
    for text in texts:
        try:  # protobuf returns a string field holding broken UTF-8 as bytes
            valid = not isinstance(text, bytes) and text.encode("utf-8") is not None
        except UnicodeEncodeError:
            valid = False
        if not valid:
            raise ModelError(f"{name}: a name is not valid UTF-8 ({text!r})")
