"""Integer codes moved into sparse_initializer storage (COO, int64 linear indices).

ONNX's sparse format pays 8 bytes of index per non-zero, so a tensor is moved
only when that makes it smaller; the others stay dense.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def sparse_bytes(n_nonzero: int, value_bytes: int) -> int:
    return n_nonzero * (value_bytes + 8)


def to_sparse(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Move the named int8 initializers to sparse storage where it saves bytes; return those moved."""
    moved = []
    wanted = set(names)
    keep = []
    for tensor in model.graph.initializer:
        if tensor.name not in wanted or tensor.data_type != onnx.TensorProto.INT8:
            keep.append(tensor)
            continue
        dense = numpy_helper.to_array(tensor)
        flat = np.flatnonzero(dense)
        if sparse_bytes(flat.size, 1) >= dense.size:
            keep.append(tensor)
            continue
        values = numpy_helper.from_array(dense.ravel()[flat], tensor.name)
        indices = numpy_helper.from_array(flat.astype(np.int64), tensor.name + "_indices")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, dense.shape))
        moved.append(tensor.name)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return moved
