"""`onnxjpq finetune`: solve the plan, train in torch with it frozen, rewrite, validate."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..pipeline.compress import OutputConfig, apply_plan, find_model_layers, float_params, plan_model
from ..errors import OptionError
from ..graph.layers import Selection
from ..runtime.data import Dataset
from ..runtime.sessions import accuracy, predict, session
from .bridge import OnnxModule, TorchModel, with_weights
from ..graph.layers import kept_names
from ..graph.macs import layer_macs, tensor_shapes
from .admm import AdmmConfig, AdmmState, project
from .djpq import DjpqConfig, DjpqState
from .masked import masked_quantizer
from .train import TrainConfig, distributed, load_checkpoint, train

METHODS = ("masked", "admm", "djpq")
_CONFIGS = {"admm": AdmmConfig, "djpq": DjpqConfig}


def _evaluate(module: OnnxModule, data: Dataset, batch: int = 256) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        outs = [module(*[torch.from_numpy(v[i:i + batch]) for v in data.inputs.values()])[0].numpy()
                for i in range(0, len(data), batch)]
    return np.concatenate(outs)


def finetune(model: onnx.ModelProto, config, data: Dataset, train_config: TrainConfig = TrainConfig(),
             method: str = "masked", selection: Selection = Selection(), output: OutputConfig = OutputConfig(),
             val: Dataset | None = None, on_epoch=None, on_step=None,
             torch_module: torch.nn.Module | None = None) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune `model` and rewrite it.

    `torch_module`: train the user's own module instead of running the ONNX
    graph in torch; its parameter names must be the ONNX initializer names.

    masked: `config` (OpqConfig or AnncConfig) solves the plan, which stays frozen.
    admm: `config` is an AdmmConfig; the plan comes from the final projection.
    djpq: `config` is a DjpqConfig (a BOPs reduction); bits, steps and pruned channels are learned.
    """
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    wanted = _CONFIGS.get(method)
    if (wanted is None and isinstance(config, tuple(_CONFIGS.values()))) or \
            (wanted is not None and not isinstance(config, wanted)):
        raise OptionError(f"the {method} method was given a {type(config).__name__}")
    layers, skipped = find_model_layers(model, selection)
    module = (OnnxModule(model) if torch_module is None
              else TorchModel(torch_module, model, [l.name for l in layers]))
    teacher = None if data.labels is not None else _all_outputs(model, data)
    check = val if val is not None else data
    first, second = _resume_points(train_config, method)
    history: list[dict] = [*(first or {}).get("history", []), *(second or {}).get("history", [])]

    def log_epoch(epoch: int, entry: dict) -> None:
        if check.labels is not None:
            entry["accuracy"] = accuracy(_evaluate(module, check), check.labels)
        entry["phase"] = phase
        history.append(entry)
        if on_epoch:
            on_epoch(len(history) - 1, entry)

    labelled = check.labels is not None
    fp32 = accuracy(_evaluate(module, check), check.labels) if labelled else None
    learned = None
    rank = distributed()[0]
    if method == "djpq":
        phase = "djpq"
        plan, learned = _djpq_phase(model, module, layers, config, data, train_config, teacher, log_epoch, on_step,
                                    first)
        retrain = dict(epochs=config.retrain_epochs, lr=config.lr, optimizer="adam")
    elif method == "admm":
        phase = "admm"
        plan = _admm_phase(module, layers, skipped, selection, config, data, train_config, teacher, log_epoch,
                           on_step, first)
        retrain = dict(epochs=config.retrain_epochs)
    else:
        plan, retrain = plan_model(model, config, selection, output), {}
    previous = None  # the first phase's last checkpoint: a retraining checkpoint carries it to rebuild its start
    if method != "masked" and train_config.checkpoint and rank == 0:
        previous = first if second is not None else load_checkpoint(train_config.checkpoint)
    phase = "masked"
    _set_masks(module, layers, plan)
    before = accuracy(_evaluate(module, check), check.labels) if labelled else None
    if retrain.get("epochs", 1):
        train(module, data, replace(train_config, **retrain), teacher, log_epoch, on_step, resume_from=second,
              tag={"method": method, "phase": phase, "previous": previous})
    out, report = apply_plan(with_weights(model, _final_arrays(module)), plan, selection, output,
                             {"method": method, "notes": []})
    report["finetune"] = {"method": method, "config": asdict(config) if method != "masked" else None,
                          "train": asdict(train_config), "history": history, "accuracy_fp32": fp32,
                          "accuracy_before": before, "learned_bits": learned,
                          "torch_vs_onnxruntime_max_abs": float(np.abs(_evaluate(module, check)
                                                                        - predict(session(out), check)).max())}
    return out, report


def _resume_points(train_config: TrainConfig, method: str) -> tuple[dict | None, dict | None]:
    """The checkpoints `--resume` continues the first phase (admm, djpq) and the masked retraining from."""
    if not (train_config.resume and train_config.checkpoint and Path(train_config.checkpoint).is_file()):
        return None, None
    state = load_checkpoint(train_config.checkpoint)
    if state.get("method") != method:
        raise OptionError(f"--resume: {train_config.checkpoint} is a checkpoint of a {state.get('method')} run, "
                          f"not {method}")
    if state["phase"] != "masked":
        return state, None
    return state["previous"], state


def _djpq_phase(model, module, layers, config: DjpqConfig, data, train_config, teacher, log_epoch, on_step,
                resume_from: dict | None = None):
    """Train quantizers, gates and weights together; leave the module holding the learned weights
    (codes x steps) with the DJPQ machinery removed, and return the plan giving them."""
    shapes = tensor_shapes(model)
    macs = {l.name: layer_macs(l, shapes) for l in layers}
    if any(v is None for v in macs.values()):
        raise OptionError("DJPQ needs every layer's MACs: shape inference could not find them")
    state = DjpqState(module, layers, macs, config, shapes)

    def end_epoch(epoch: int, entry: dict) -> None:
        entry["bops_ratio"] = state.bops_ratio()
        log_epoch(epoch, entry)

    joint = replace(train_config, epochs=config.epochs, lr=config.lr, optimizer="adam")
    train(module, data, joint, teacher, end_epoch, on_step, regularizer=state.penalty, resume_from=resume_from,
          tag={"method": "djpq", "phase": "djpq"})
    pruned = state.meet_budget()
    arrays, plan = state.export()
    plan.diagnostics["channels_pruned_to_meet_budget"] = pruned
    state.detach()
    with torch.no_grad():
        for name, values in arrays.items():
            module.parameter(name).copy_(torch.from_numpy(values))
    return plan, plan.diagnostics["learned_bits"]


def _set_masks(module: OnnxModule, layers, plan) -> None:
    plans = plan.by_name()
    for layer in layers:
        values = module.parameter(layer.name).detach().numpy()
        module.weight_transform[layer.name] = masked_quantizer(values, plans[layer.name], layer.axis, layer.groups)


def _final_arrays(module: OnnxModule) -> dict[str, np.ndarray]:
    arrays = module.state_arrays()
    with torch.no_grad():
        for name, transform in module.weight_transform.items():
            arrays[name] = transform(module.parameter(name)).numpy()
    return arrays


def _admm_phase(module, layers, skipped, selection, config: AdmmConfig, data, train_config, teacher, log_epoch,
                on_step, resume_from: dict | None = None):
    """ADMM epochs, then the final projection's plan (for the masked retraining)."""
    fixed = kept_names(layers, selection, budget=True)
    n_float = float_params(skipped)
    total = sum(l.values.size for l in layers) + n_float
    state = AdmmState(module, layers, config, fixed, 32.0 * n_float, total)

    def end_epoch(epoch: int, entry: dict) -> None:
        state.end_of_epoch(epoch)
        entry.update(rho=state.rho, target_rate=config.rate_at(epoch + 1))
        log_epoch(epoch, entry)

    train(module, data, replace(train_config, epochs=config.epochs), teacher, end_epoch, on_step,
          regularizer=state.penalty, resume_from=resume_from, extra=state, tag={"method": "admm", "phase": "admm"})
    _, plan = project(layers, state.weights(), config.rate, fixed, 32.0 * n_float, total)
    return plan


def _all_outputs(model: onnx.ModelProto, data: Dataset, batch: int = 256) -> list[np.ndarray]:
    sess = session(model)
    chunks = [sess.run(None, {k: v[i:i + batch] for k, v in data.inputs.items()})
              for i in range(0, len(data), batch)]
    return [np.concatenate(parts) for parts in zip(*chunks)]
