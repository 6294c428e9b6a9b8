"""Which fidelity measure fits a model's output, and that measure as points out of 100.

Top-1 agreement says something only about class scores; over the 384
dimensions of a sentence embedding it is noise. So `choose_metric` looks at
output 0 (the op that produces it, its name, its shape) and picks:

    accuracy   class scores with labels          top-1 accuracy %
    agreement  class scores without labels       % of top-1 classes equal to the reference's
    cosine     embeddings, features, sequences   100 · mean cosine to the reference
    snr        one value per sample (regression) 100 · (1 − ‖Δ‖² / ‖y‖²) = 100 · (1 − 10^(−SNR/10))

Each is 100 for the reference itself (accuracy: the reference's accuracy), so
"points lost" means the same thing for all four: `--max-drop 0.5` allows
half a point of accuracy or agreement, a mean cosine of 0.995, or 0.5 % of
the output energy as error (an SNR of 23 dB).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import onnx

from ..errors import OptionError

METRICS = ("accuracy", "agreement", "cosine", "snr")
_SHAPE_ONLY = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast", "CastLike", "Transpose"}
_CLASS_OPS = {"Softmax", "LogSoftmax", "Sigmoid", "Hardmax"}
_EMBEDDING_OPS = {"LpNormalization", "ReduceMean", "ReduceSum", "GlobalAveragePool", "GlobalMaxPool",
                  "LayerNormalization"}
_NORMS = {"ReduceL2", "ReduceSumSquare", "Sqrt", "LpNormalization", "ReduceL1"}
_CLASS_NAME = re.compile(r"logit|prob|softmax|class|score|label|pred", re.I)
_EMBEDDING_NAME = re.compile(r"embed|hidden|pool|feature|vector|encod|latent|represent|sentence|descriptor", re.I)


@dataclass(frozen=True)
class Metric:
    """The measure chosen and why, in a few words."""

    name: str
    reason: str

    @property
    def class_scores(self) -> bool:
        return self.name in ("accuracy", "agreement")


def _producer(graph: onnx.GraphProto, name: str) -> tuple[str | None, onnx.NodeProto | None]:
    """The op producing tensor `name`, looking through shape-only ops."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(name)
    for _ in range(16):
        if node is None or node.op_type not in _SHAPE_ONLY or not node.input:
            break
        node = producers.get(node.input[0])
    return (node.op_type if node is not None else None), node


def _divides_by_a_norm(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Whether the divisor of a Div is computed from a norm (ReduceL2, Sqrt, ...) within a few ops."""
    producers = {out: n for n in graph.node for out in n.output}
    frontier, seen = deque(node.input[1:2]), 0
    while frontier and seen < 24:
        found = producers.get(frontier.popleft())
        seen += 1
        if found is not None:
            if found.op_type in _NORMS:
                return True
            frontier.extend(found.input)
    return False


def _by_graph(model: onnx.ModelProto | None, name: str) -> tuple[bool, str] | None:
    """(class scores?, reason) from the op producing output 0, or None when it does not tell."""
    if model is None:
        return None
    op, node = _producer(model.graph, name)
    if op in _CLASS_OPS:
        return True, f"output {name!r} comes from {op}: class scores"
    if op in _EMBEDDING_OPS or (op == "Div" and _divides_by_a_norm(model.graph, node)):
        return False, f"output {name!r} comes from {'a division by its norm' if op == 'Div' else op}: features"
    return None


def _by_name(name: str) -> tuple[bool, str] | None:
    is_class, is_embedding = bool(_CLASS_NAME.search(name)), bool(_EMBEDDING_NAME.search(name))
    if is_class != is_embedding:
        return is_class, f"output {name!r} is named like {'class scores' if is_class else 'an embedding'}"
    return None


def choose_metric(name: str, shape: list, labelled: bool, model: onnx.ModelProto | None = None,
                  asked: str = "auto") -> Metric:
    """The fidelity measure for output 0 (`name`, per-sample `shape` without the batch axis).

    `asked` (a METRICS name) overrides the choice; 'accuracy' needs labels. Class scores
    need a class axis last: shapes [C] or [T, C] (C > 1); a higher-rank output is a
    feature map, one value per sample a regression."""
    if asked != "auto":
        if asked not in METRICS:
            raise OptionError(f"--metric must be auto or one of {', '.join(METRICS)}, got {asked!r}")
        if asked == "accuracy" and not labelled:
            raise OptionError("--metric accuracy needs labels in the data (see --labels)")
        return Metric(asked, "chosen with --metric")
    size = math.prod(d for d in shape if isinstance(d, int)) if shape else 1
    if size <= 1 or (shape and shape[-1] == 1):
        return Metric("snr", f"output {name!r} has one value per sample: a regression")
    if len(shape) > 2:
        return Metric("cosine", f"output {name!r} is a feature map (shape {shape}), not class scores")
    judged = _by_graph(model, name) or _by_name(name)
    if judged is None:
        judged = (len(shape) == 1, f"output {name!r} has shape {shape}: "
                                   + ("a score per class" if len(shape) == 1 else "a sequence of features"))
    is_class, reason = judged
    if not is_class:
        return Metric("cosine", reason + ("; labels not used" if labelled else ""))
    return Metric("accuracy" if labelled else "agreement", reason + ("" if labelled else "; no labels"))


def points(metric: str, *, accuracy: float | None = None, agreement: float | None = None,
           cosine: float | None = None, snr_db: float | None = None) -> float:
    """The measure as points out of 100 (100: the reference itself; accuracy: as measured).

    >>> points("snr", snr_db=20.0)
    99.0
    >>> points("cosine", cosine=0.995)
    99.5
    """
    value = {"accuracy": accuracy, "agreement": agreement, "cosine": cosine, "snr": snr_db}[metric]
    if value is None:
        raise OptionError(f"the {metric} of the outputs was not measured")
    if metric == "cosine":
        return 100.0 * value
    if metric == "snr":
        return 100.0 * (1.0 - 10.0 ** min(-value / 10.0, 300.0))  # an SNR of -3000 dB is as bad as any
    return value


def describe(metric: str) -> str:
    """What a point of the measure is, for messages."""
    return {"accuracy": "top-1 accuracy points", "agreement": "top-1 agreement points",
            "cosine": "cosine points (100 x mean cosine)",
            "snr": "output-energy points (100 x (1 - error energy / output energy))"}[metric]
