"""Opset requirements of the rewrites, upgrading a model to meet them, and refusing
models onnx or onnxruntime cannot handle (too new, too old, unknown operator domains,
an opset whose DequantizeLinear this onnxruntime lacks)."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from ..errors import ModelError, first_line
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
    _drop_new_value_info(converted, model)
    return converted


def _drop_new_value_info(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Remove the shape annotations the converter's shape inference added (subgraphs
    included): the input did not carry them, and they cost bytes (671 of them, 35 KB, on
    PP-OCR's detector)."""
    declared = {v.name for g in proto_graphs(original.graph) for v in g.value_info}
    for graph in proto_graphs(converted.graph):
        kept = [v for v in graph.value_info if v.name in declared]
        del graph.value_info[:]
        graph.value_info.extend(kept)


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


def fit_dequantize_opset(graph: gs.Graph, container: str, per_axis: bool) -> None:
    """Make `graph`'s ai.onnx opset one at which this onnxruntime runs DequantizeLinear on
    `container` ("int4", "int8" or "int16") codes, per axis or per tensor.

    A model may declare an opset onnx knows and onnxruntime does not implement yet. The
    opset is then lowered to the newest at which every kind of codes the rewrite writes
    runs, if every other node resolves to the same operator version there (so means the
    same); otherwise a one-line ModelError."""
    opset = graph.opset
    reason = dequantize_failure(opset, container, per_axis)
    if reason is None:
        return
    target = next((o for o in range(opset - 1, QDQ_MIN_OPSET - 1, -1)
                   if all(dequantize_failure(o, *kind) is None for kind in {(container, per_axis), *_written(o)})),
                  None)
    head = (f"ai.onnx opset {opset}: this onnxruntime ({ort.__version__}) cannot run "
            f"DequantizeLinear({opset}) on {container} codes ({reason})")
    if target is None:
        raise ModelError(f"{head}, nor at an older opset; compress with --format float")
    changed = _changed_ops(graph, target, opset)
    if changed:
        raise ModelError(f"{head}; it runs opset {target}, which would give {', '.join(changed)} an older "
                         "operator version; compress with --format float")
    graph.opset = target
    for entry in graph.import_domains or []:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target


def _written(opset: int) -> list[tuple[str, bool]]:
    """The (container, per axis) kinds of codes the rewrite may write at `opset`."""
    containers = ("int4", "int8", "int16") if opset >= INT4_MIN_OPSET else ("int8",)
    return [(c, a) for c in containers for a in ((False, True) if opset >= 13 else (False,))]


def _changed_ops(graph: gs.Graph, lower: int, upper: int) -> list[str]:
    """The ai.onnx operators (but DequantizeLinear) of `graph` whose version at opset `upper`
    is newer than `lower`."""
    ops = {n.op for g in [graph, *graph.subgraphs(recursive=True)] for n in g.nodes
           if n.domain in (None, "", "ai.onnx") and n.op != "DequantizeLinear"}
    changed = []
    for op in sorted(ops):
        try:
            since = onnx.defs.get_schema(op, upper, "").since_version
        except onnx.defs.SchemaError:
            since = upper
        if since > lower:
            changed.append(op)
    return changed


@lru_cache(maxsize=None)
def dequantize_failure(opset: int, container: str, per_axis: bool) -> str | None:
    """Why onnxruntime cannot load a one-node DequantizeLinear model at `opset`, or None."""
    dtype = {"int4": onnx.TensorProto.INT4, "int8": onnx.TensorProto.INT8, "int16": onnx.TensorProto.INT16}[container]
    shape = [2] if per_axis else []
    inits = [helper.make_tensor("q", dtype, [2, 2], [1, -1, 2, 0]),
             numpy_helper.from_array(np.ones(shape, np.float32), "s"),
             helper.make_tensor("z", dtype, shape, [0] * (2 if per_axis else 1))]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **({"axis": 0} if per_axis else {}))
    graph = helper.make_graph([node], "probe", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
                              inits)
    imports = [helper.make_opsetid("", opset)]
    ir = max(helper.find_min_ir_version_for(imports, ignore_unknown=True), INT4_MIN_IR if container == "int4" else 0)
    model = helper.make_model(graph, opset_imports=imports, ir_version=ir)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; any failure means "cannot"
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(exc))
        return text if len(text) <= 160 else text[:157] + "..."
    return None


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
