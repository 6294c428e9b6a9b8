"""How a layer-wise solver sees each compressible layer (METHODS.md §7a): the layer as a
matrix and the tensors that hold its input columns.

A layer is seen by the solvers as a matrix W [rows = output channels, cols] with
output W·x for each input column x; `LayerView` says how the stored weight maps
onto that matrix (`index`: the stored element of each entry, through any
Transpose/Reshape/Unsqueeze/Squeeze/Cast chain) and which tensor holds the
columns:

- MatMul(x, W [K, N]): W is Wᵀ, columns are x's rows (batch and sequence
  dims flattened); MatMul(W [M, K], x): columns are x's columns (axis −2).
- Gemm: B is the weight (transB: as stored, else transposed), columns are the
  rows of A (its columns with transA); a weight in A pairs with the columns of B.
- Conv [O, C/g, k…]: im2col columns of the input with the layer's strides, pads
  (auto_pad resolved per input shape), dilations and groups, one Hessian per
  group (depthwise: one k·k Hessian per channel).
- LSTM/GRU/RNN W [D, G·h, I]: columns are the time steps of the sequence input;
  R [D, G·h, h]: the previous hidden state of each step and direction (from the
  node's Y output and initial_h, zeros without it), one Hessian per direction.

Everything else falls back to the data-free solve, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..core.hessian import ConvGeometry
from ..graph.layers import WeightLayer


@dataclass(frozen=True)
class ConvAttrs:
    """A Conv's attributes; `geometry` resolves auto_pad for an input's spatial shape."""

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int
    auto_pad: str

    def geometry(self, spatial: tuple[int, ...]) -> ConvGeometry:
        r = len(self.kernel_shape)
        strides, dilations = self.strides or (1,) * r, self.dilations or (1,) * r
        pads = self.pads
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            totals = [max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                      for size, s, k, d in zip(spatial, strides, self.kernel_shape, dilations)]
            begins = [t // 2 if self.auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
            pads = tuple(begins) + tuple(t - b for t, b in zip(totals, begins))
        elif self.auto_pad == "VALID":
            pads = ()
        return ConvGeometry(self.kernel_shape, strides, pads, dilations, self.groups)


@dataclass(frozen=True)
class HiddenStates:
    """Where a recurrent op's R inputs come from: its Y output and initial_h (name or values)."""

    output: str
    initial: str | None
    layout: int
    reverse: tuple[bool, ...]  # per direction


@dataclass(frozen=True)
class Use:
    """One consumer's input columns: tensor `tensor`, read as `kind` ("linear", "conv", "hidden")."""

    tensor: str
    kind: str
    feature_axis: int = -1
    conv: ConvAttrs | None = None
    hidden: HiddenStates | None = None
    output: str = ""  # the consumer's output tensor

    @property
    def tensors(self) -> tuple[str, ...]:
        if self.hidden is None:
            return (self.tensor,)
        return (self.hidden.output,) + ((self.hidden.initial,) if self.hidden.initial else ())


@dataclass(frozen=True)
class LayerView:
    """A layer as a matrix: `index` [rows, cols] holds the stored element of each entry."""

    name: str
    uses: tuple[Use, ...]
    index: np.ndarray
    groups: int  # Hessian groups (rows split evenly between them)
    channel_of_row: np.ndarray | None  # the stored output channel of each row, if one-to-one

    @property
    def rows(self) -> int:
        return self.index.shape[0]

    @property
    def cols(self) -> int:
        return self.index.shape[1]

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for use in self.uses for t in use.tensors))

    def matrix(self, values: np.ndarray) -> np.ndarray:
        """The stored values as the solver's [rows, cols] matrix."""
        return np.asarray(values).reshape(-1)[self.index]

    def stored(self, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        """A [rows, cols] matrix put back in the stored weight's layout (shape and dtype of `like`)."""
        out = np.empty(like.size, np.asarray(matrix).dtype)
        out[self.index.reshape(-1)] = np.asarray(matrix).reshape(-1)
        return out.reshape(like.shape)


def layer_view(layer: WeightLayer, main: gs.Graph) -> LayerView | str:
    """How the solvers see `layer`, or why its inputs cannot be captured."""
    main_nodes = {id(n) for n in main.nodes}
    try:
        index = slot_index(layer)
    except ValueError as exc:
        return str(exc)
    views = []
    for node, slot in layer.uses:
        if id(node) not in main_nodes:
            return f"{node.op} {node.name!r} is inside a subgraph (its inputs cannot be exposed as outputs)"
        view = _use_view(node, slot, index)
        if isinstance(view, str):
            return view
        views.append(view)
    matrices = {(v[1].shape, v[1].tobytes(), v[2]) for v in views}
    if len(matrices) != 1:
        return "its consumers read it in different layouts"
    _, matrix, groups = views[0]
    return LayerView(layer.name, tuple(v[0] for v in views), matrix, groups,
                     _channel_of_row(matrix, layer.values.shape, layer.axis))


def _use_view(node: gs.Node, slot: int, index: np.ndarray):
    """(Use, index matrix, Hessian groups) of one consumer, or the reason it has none."""
    data, reason = _activation(node, slot)
    if reason is not None:
        return reason
    op, rank, out = node.op, index.ndim, node.outputs[0].name
    if op == "Conv" and slot == 1:
        conv = ConvAttrs(tuple(index.shape[2:]), _ints(node, "strides"), _ints(node, "pads"),
                         _ints(node, "dilations"), int(node.attrs.get("group", 1)),
                         _text(node.attrs.get("auto_pad", "NOTSET")))
        return Use(data, "conv", conv=conv, output=out), index.reshape(index.shape[0], -1), conv.groups
    if op == "MatMul" and rank == 2:
        return Use(data, "linear", -1 if slot == 1 else -2, output=out), index.T if slot == 1 else index, 1
    if op == "Gemm":
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        if slot == 1:
            return Use(data, "linear", 0 if trans_a else 1, output=out), index if trans_b else index.T, 1
        return Use(data, "linear", 1 if trans_b else 0, output=out), index.T if trans_a else index, 1
    if op in ("LSTM", "GRU", "RNN") and rank == 3:
        return _recurrent_view(node, slot, index, data)
    if op == "MatMul":
        return f"MatMul weight of rank {rank} (a batched product; only 2-D weights are captured)"
    return f"{op} input {slot}: its inputs are not columns of its weight (data-free solve)"


def _recurrent_view(node: gs.Node, slot: int, index: np.ndarray, data: str):
    matrix = index.reshape(-1, index.shape[2])
    layout = int(node.attrs.get("layout", 0))
    if slot == 1:
        return Use(data, "linear", -1), matrix, 1
    if len(node.inputs) > 4 and node.inputs[4] is not None and node.inputs[4].name:
        return "the recurrent op has sequence_lens (padded steps would enter the Hessian)"
    if node.op == "GRU" and not node.attrs.get("linear_before_reset", 0):
        return "GRU with linear_before_reset = 0 multiplies R by r⊙h, which the graph does not expose"
    if not node.outputs or not node.outputs[0].name:
        return "the recurrent op's Y output (its hidden states) is not in the graph"
    initial = node.inputs[5] if len(node.inputs) > 5 and node.inputs[5] is not None else None
    if initial is not None and isinstance(initial, gs.Constant):
        return "its initial_h is a constant (not captured)"
    direction = _text(node.attrs.get("direction", "forward"))
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}[direction]
    hidden = HiddenStates(node.outputs[0].name, initial.name if initial is not None and initial.name else None,
                          layout, reverse)
    return Use(node.outputs[0].name, "hidden", hidden=hidden), matrix, len(reverse)


def _activation(node: gs.Node, slot: int) -> tuple[str | None, str | None]:
    """(the name of the tensor a weight slot multiplies, None), or (None, why it cannot be captured)."""
    other = 1 if node.op in ("MatMul", "Gemm") and slot == 0 else 0
    tensor = node.inputs[other] if len(node.inputs) > other else None
    if tensor is None or not tensor.name:
        return None, f"{node.op} {node.name!r} has no input {other}"
    if isinstance(tensor, gs.Constant) or (tensor.inputs and tensor.inputs[0].op == "Constant"):
        return None, f"{node.op} {node.name!r} multiplies it by a constant (nothing to capture)"
    return tensor.name, None


def _channel_of_row(matrix: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray | None:
    """The stored channel (along `axis`) of each row, when every row lies in one channel and
    the rows are the channels one-to-one; else None (per-channel steps cannot be stored)."""
    if axis is None:
        return None
    axis %= len(shape)
    stride = math.prod(shape[axis + 1:])
    channels = (matrix // stride) % shape[axis]
    if not (channels == channels[:, :1]).all():
        return None
    rows = channels[:, 0].copy()  # not a view: it would keep all of `channels` alive
    return rows if len(rows) == shape[axis] and len(np.unique(rows)) == len(rows) else None


def slot_index(layer: WeightLayer) -> np.ndarray:
    """The stored element (flat index) of each element of the tensor the consumers read."""
    dtype = np.int32 if layer.values.size < 2 ** 31 else np.int64  # a layer's index lives all run
    index = np.arange(layer.values.size, dtype=dtype).reshape(layer.values.shape)
    for node in layer.chain:
        index = _through(node, index)
    return index


def _through(node: gs.Node, index: np.ndarray) -> np.ndarray:
    if node.op == "Cast":
        return index
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        return np.transpose(index, None if perm is None else [int(p) for p in perm])
    if node.op == "Reshape":
        shape = [int(d) for d in _const_input(node, 1)]
        if not node.attrs.get("allowzero", 0):
            shape = [index.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return index.reshape(shape)
    axes = node.attrs.get("axes")
    axes = [int(a) for a in (axes if axes is not None else _const_input(node, 1, optional=True) or [])]
    if node.op == "Unsqueeze":
        return np.expand_dims(index, tuple(a % (index.ndim + len(axes)) for a in axes))
    if node.op == "Squeeze":
        return np.squeeze(index, tuple(a % index.ndim for a in axes) if axes else None)
    raise ValueError(f"cannot follow {node.op} {node.name!r} from the stored weight")


def _const_input(node: gs.Node, i: int, optional: bool = False):
    tensor = node.inputs[i] if len(node.inputs) > i else None
    if isinstance(tensor, gs.Variable) and tensor.inputs and tensor.inputs[0].op == "Constant":
        tensor = tensor.inputs[0].attrs["value"]
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values).reshape(-1).tolist()
    if optional:
        return None
    raise ValueError(f"{node.op} {node.name!r} has no constant input {i}")


def _ints(node: gs.Node, name: str) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attrs.get(name, ()) or ())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
