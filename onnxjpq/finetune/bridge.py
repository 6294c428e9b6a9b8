"""Run an ONNX graph as a torch module whose parameters are its float initializers.

Scalars (epsilons, exponents: 0-d tensors) and float8 tensors stay constants.

Parameter names are the ONNX initializer names (in `module.weights`, a
ParameterDict keyed by a safe alias), so trained values map straight back to
the graph. Weight-producing Constant nodes of the main graph become parameters
too (If/Loop/Scan bodies keep theirs as constants). The ops are
those of the registry in `torchops` (one entry per ONNX op type). A
`weight_transform` hook (name -> function of the parameter) lets a method
quantize or mask the weights in the forward pass, a `tensor_transform` hook
(tensor name -> function) the activations (DJPQ's, on `graph.taps`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnx.inliner
import torch
from torch import nn

from ..errors import ModelError
from ..graph.io import with_weights  # noqa: F401  (re-exported: the fine-tuning writes weights back with it)
from .torchops import compile_graph, model_opset


class OnnxModule(nn.Module):
    """The main graph of `model`, executed node by node with torch ops.

    Every op and tensor type the registry cannot run is refused here, in one
    ModelError, before any training starts.
    """

    def __init__(self, model: onnx.ModelProto, trainable: set[str] | None = None):
        super().__init__()
        if model.functions:
            model = onnx.inliner.inline_local_functions(model)
        self.graph = compile_graph(model.graph, model_opset(model))
        values = self.graph.constants
        self.graph.constants = {}
        self.alias = {name: f"p{i}" for i, name in enumerate(values)}
        self.weights = nn.ParameterDict()
        self.constants: dict[str, torch.Tensor] = {}
        for name, tensor in values.items():
            trainable_type = tensor.is_floating_point() and tensor.element_size() > 1 and tensor.dim() > 0
            if trainable_type and (trainable is None or name in trainable):
                self.weights[self.alias[name]] = nn.Parameter(tensor)
            else:
                self.constants[name] = tensor
        self.input_names = self.graph.input_names
        self.output_names = self.graph.output_names
        self.weight_transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.tensor_transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.pre_forward: list[Callable[[], None]] = []  # e.g. sampling stochastic gates

    def parameter(self, name: str) -> nn.Parameter:
        return self.weights[self.alias[name]]

    def named_weights(self) -> dict[str, nn.Parameter]:
        """ONNX name -> parameter, for the trainable tensors."""
        return {name: self.weights[a] for name, a in self.alias.items() if a in self.weights}

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        for hook in self.pre_forward:
            hook()
        env: dict[str, torch.Tensor] = dict(self.constants)
        for name, param in self.named_weights().items():
            transform = self.weight_transform.get(name)
            env[name] = transform(param) if transform else param
        env.update(zip(self.input_names, inputs))
        self.graph.run(env, self.tensor_transform)
        return [env[name] for name in self.output_names]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Current values of the trainable tensors, by ONNX name."""
        return {name: p.detach().cpu().numpy() for name, p in self.named_weights().items()}


class TorchModel(nn.Module):
    """A user's own torch module in the bridge's place.

    Its parameters must carry the ONNX initializer names of the weights to
    compress (torch.onnx.export names initializers after the state_dict keys,
    so a module and its export match). Weight transforms are applied with
    torch.func.functional_call, so the user's module is never modified.
    """

    def __init__(self, module: nn.Module, model: onnx.ModelProto, required: list[str]):
        super().__init__()
        self.inner = module
        names = dict(module.named_parameters())
        missing = [n for n in required if n not in names]
        if missing:
            raise ModelError(f"the torch module has no parameter named {', '.join(missing[:3])}: its parameter "
                             "names must match the ONNX initializer names")
        onnx_names = {t.name for t in model.graph.initializer} | {
            n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        self._weights = {n: p for n, p in names.items() if n in onnx_names}
        self.weight_transform: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.pre_forward: list[Callable[[], None]] = []

    def parameter(self, name: str) -> nn.Parameter:
        return self._weights[name]

    def named_weights(self) -> dict[str, nn.Parameter]:
        return dict(self._weights)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {name: p.detach().cpu().numpy() for name, p in self._weights.items()}

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        for hook in self.pre_forward:
            hook()
        params = {name: self.weight_transform[name](p) if name in self.weight_transform else p
                  for name, p in self.inner.named_parameters()}
        out = torch.func.functional_call(self.inner, params, inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]
