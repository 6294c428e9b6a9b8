"""`onnxjpq finetune`: solve the plan, train in torch with it frozen, rewrite, validate."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ..compress import OutputConfig, apply_plan, find_model_layers, plan_model
from ..errors import OptionError
from ..layers import Selection
from ..validate import Dataset, accuracy, predict, session
from .bridge import OnnxModule, with_weights
from .masked import masked_quantizer
from .train import TrainConfig, train

METHODS = ("masked",)


def _evaluate(module: OnnxModule, data: Dataset, batch: int = 256) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        outs = [module(*[torch.from_numpy(v[i:i + batch]) for v in data.inputs.values()])[0].numpy()
                for i in range(0, len(data), batch)]
    return np.concatenate(outs)


def finetune(model: onnx.ModelProto, config, data: Dataset, train_config: TrainConfig = TrainConfig(),
             method: str = "masked", selection: Selection = Selection(), output: OutputConfig = OutputConfig(),
             val: Dataset | None = None, on_epoch=None, on_step=None) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune `model` under the plan `config` solves (OPQ or budget) and rewrite it."""
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    plan = plan_model(model, config, selection, output)
    layers, _ = find_model_layers(model, selection)
    module = OnnxModule(model)
    plans = plan.by_name()
    for layer in layers:
        module.weight_transform[layer.name] = masked_quantizer(layer.values, plans[layer.name], layer.axis,
                                                               layer.groups)
    teacher = None if data.labels is not None else [np.concatenate([o]) for o in
                                                      _all_outputs(model, data)]
    check = val if val is not None else data

    def log_epoch(epoch: int, entry: dict) -> None:
        if check.labels is not None:
            entry["accuracy"] = accuracy(_evaluate(module, check), check.labels)
        if on_epoch:
            on_epoch(epoch, entry)

    before = accuracy(_evaluate(module, check), check.labels) if check.labels is not None else None
    history = train(module, data, train_config, teacher, log_epoch, on_step)
    arrays = module.state_arrays()
    with torch.no_grad():
        for name, transform in module.weight_transform.items():
            arrays[name] = transform(module.parameter(name)).numpy()
    out, report = apply_plan(with_weights(model, arrays), plan, selection, output,
                             {"method": plan.method, "notes": []})
    torch_out = _evaluate(module, check)
    ort_out = predict(session(out), check)
    report["finetune"] = {"method": method, "epochs": train_config.epochs, "lr": train_config.lr,
                          "history": history, "accuracy_before": before,
                          "torch_vs_onnxruntime_max_abs": float(np.abs(torch_out - ort_out).max())}
    return out, report


def _all_outputs(model: onnx.ModelProto, data: Dataset, batch: int = 256) -> list[np.ndarray]:
    sess = session(model)
    chunks = [sess.run(None, {k: v[i:i + batch] for k, v in data.inputs.items()})
              for i in range(0, len(data), batch)]
    return [np.concatenate(parts) for parts in zip(*chunks)]
