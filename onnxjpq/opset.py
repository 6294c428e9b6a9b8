"""Opset requirements of the rewrites, and upgrading a model to meet them."""

from __future__ import annotations

import onnx
from onnx import version_converter

QDQ_MIN_OPSET = 10  # DequantizeLinear with int8
INT4_MIN_OPSET = 21  # int4 / int16 DequantizeLinear inputs
INT4_MIN_IR = 10


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
