"""Each layer's MACs on the data a run was given, for BOPs.

`graph.macs` counts them from onnx's shape inference; a model exported for any
image size has no static spatial sizes, and some reshapes computed from Shape
defeat inference. Here the dynamic input axes take the data's sizes, and the
shapes inference still cannot find are measured by running one sample through
onnxruntime.
"""

from __future__ import annotations

import math
from typing import Sequence

import onnx

from ..graph.layers import WeightLayer
from ..graph.macs import layer_macs, tensor_shapes
from .data import Dataset
from .probe import Probe, batches, make_template


def data_macs(model: onnx.ModelProto, layers: Sequence[WeightLayer], data: Dataset) -> dict[str, int | None]:
    """layer name -> dense MACs per sample (None where not even a run tells them)."""
    shapes = tensor_shapes(model, {name: array.shape for name, array in data.inputs.items()})
    macs = {layer.name: layer_macs(layer, shapes) for layer in layers}
    unknown = [layer for layer in layers if macs[layer.name] is None]
    if not unknown or not len(data):
        return macs
    wanted = {t.name for layer in unknown for node, _ in layer.uses
              for t in [*node.inputs[:1], *node.outputs[:1]] if t.name not in shapes}
    template = make_template(model, set())
    probe = Probe(template, sorted(n for n in wanted if n))
    batch = next(batches(data, 1, probe.fixed_batch or 1, whole=bool(probe.fixed_batch)))
    measured = {name: tuple(getattr(value, "shape", ())) for name, value in probe.run(batch, {}).items()}
    shapes |= {name: (1, *shape[1:]) if shape and not probe.fixed_batch else shape
               for name, shape in measured.items() if shape and math.prod(shape) > 0}
    return {layer.name: macs[layer.name] if macs[layer.name] is not None else layer_macs(layer, shapes)
            for layer in layers}
