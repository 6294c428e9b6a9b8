"""`onnxjpq finetune`: solve the plan, train in torch with it frozen, rewrite, validate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..pipeline.compress import OutputConfig, apply_plan, find_model_layers, float_params, plan_model
from ..errors import OptionError
from ..graph.fold import fold_batch_norms
from ..graph.opset import upgrade
from ..graph.taps import MIN_OPSET as TAP_OPSET, quantize_taps, tap_layer_inputs
from ..graph.layers import Selection
from ..runtime.data import Dataset
from ..runtime.sessions import accuracy, predict, session
from .bridge import OnnxModule, TorchModel, with_weights
from ..graph.layers import kept_names
from ..graph.macs import tensor_shapes
from ..runtime.shapes import data_macs
from .admm import AdmmConfig, AdmmState, project
from .djpq import DjpqConfig, DjpqState
from .masked import masked_quantizer
from .train import TrainConfig, distributed, load_checkpoint, train

METHODS = ("masked", "admm", "djpq")
RANGE_SAMPLES = 256  # training samples whose fp32 activations set DJPQ's initial activation ranges
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
    scales: dict[str, np.ndarray] = {}
    folded = 0
    notes: list[str] = []
    taps: dict[str, tuple[str, ...]] = {}
    inputs: list = []  # what DJPQ's taps are written as
    if method == "djpq" and torch_module is None:  # a pruned channel then stays exactly zero
        model, folded = fold_batch_norms(model, scales)
        if config.act_bits:
            model, taps = _tap_inputs(model, selection, notes)
    layers, skipped = find_model_layers(model, selection)
    module = (OnnxModule(model) if torch_module is None
              else TorchModel(torch_module, model, [l.name for l in layers]))
    teacher = None if data.labels is not None else _all_outputs(model, data)
    check = val if val is not None else data
    settings = run_settings(model, config, method, selection, output, train_config, data)
    first, second = _resume_points(train_config, method, settings)
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
        plan, learned, inputs = _djpq_phase(model, module, layers, config, data, train_config, teacher, log_epoch,
                                            on_step, first, settings, scales, taps)
        retrain = dict(epochs=config.retrain_epochs, lr=config.lr, optimizer="adam")
    elif method == "admm":
        phase = "admm"
        plan = _admm_phase(module, layers, skipped, selection, config, data, train_config, teacher, log_epoch,
                           on_step, first, settings)
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
              tag={"method": method, "phase": phase, "previous": previous, "settings": settings})
    missed = plan.diagnostics.get("budget_missed")
    notes += [f"{folded} BatchNormalization folded into the Conv before them (their scales kept out of DJPQ's "
              "quantizers)"] if folded else []
    if taps:
        written = plan.diagnostics["learned_input_bits"]
        notes.append(f"{len(written)} layer inputs quantized (QuantizeLinear, DequantizeLinear, Clip) at "
                     f"{min(written.values())} to {max(written.values())} learned bits" if written else
                     "no layer input could be quantized: the training samples gave no finite range")
        model = quantize_taps(model, inputs)
    out, report = apply_plan(with_weights(model, _final_arrays(module)), plan, selection, output,
                             {"method": method, "notes": notes + ([missed] if missed else [])})
    report["finetune"] = {"method": method, "config": asdict(config) if method != "masked" else None,
                          "train": asdict(train_config), "history": history, "accuracy_fp32": fp32,
                          "accuracy_before": before, "learned_bits": learned,
                          "learned_input_bits": plan.diagnostics.get("learned_input_bits"),
                          "accuracy_onnxruntime": accuracy(predict(session(out), check), check.labels) if labelled
                          else None,  # the written file, in onnxruntime's default session
                          **_torch_vs_onnxruntime(module, out, check, report["settings"]["notes"], bool(inputs))}
    return out, report


def _torch_vs_onnxruntime(module, out: onnx.ModelProto, check: Dataset, notes: list[str], quantized_inputs: bool):
    """How far the written model's outputs are from the torch module's, in onnxruntime without
    its integer fusions; explained in a note where quantized inputs make it more than float noise."""
    difference = np.abs(_evaluate(module, check) - predict(session(out, exact=True), check))
    largest, mean = float(difference.max()), float(difference.mean())
    if quantized_inputs and largest > 1e-4:
        notes.append(f"torch and onnxruntime outputs differ by up to {largest:.3g} (mean {mean:.2g}): with "
                     "quantized layer inputs, their different float rounding order moves values lying on a "
                     "rounding boundary to the neighbouring code")
    return {"torch_vs_onnxruntime_max_abs": largest, "torch_vs_onnxruntime_mean_abs": mean}


def run_settings(model: onnx.ModelProto, config, method: str, selection: Selection, output: OutputConfig,
                 train_config: TrainConfig, data: Dataset) -> str:
    """Everything that shapes a run, as the JSON a checkpoint keeps for `--resume` to compare:
    the method and its plan or budget, the selection and output, the training settings
    (epochs, learning rate, batch, optimiser, seed), and digests of the model and the data."""
    train = {k: v for k, v in asdict(train_config).items() if k not in ("checkpoint", "resume")}
    return json.dumps({"method": method, "plan": {"type": type(config).__name__, **asdict(config)},
                       "selection": asdict(selection), "output": asdict(output), "train": train,
                       "model": _digest([p.SerializeToString(deterministic=True)
                                         for p in (*model.graph.node, *model.graph.initializer)]),
                       "data": _digest([data.labels] + [data.inputs[k] for k in sorted(data.inputs)],
                                       sorted(data.inputs))}, sort_keys=True, default=str)


def _digest(parts, names=()) -> str:
    h = hashlib.sha256(json.dumps(list(names)).encode())
    for part in parts:
        if part is None:
            h.update(b"none")
        elif isinstance(part, bytes):
            h.update(part)
        else:
            array = np.ascontiguousarray(part)
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


def setting_differences(saved: str, now: str) -> list[str]:
    """What differs between two `run_settings`, one phrase each (checkpoint's value first)."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value}
    old, new = flat(json.loads(saved)), flat(json.loads(now))
    named = {"model": "the input model", "data": "the --data file's contents"}
    out = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k not in ("method", "plan.type"), k)):
        if old.get(key) != new.get(key):
            out.append(f"{named[key]} changed" if key in named else
                       f"{key.removeprefix('plan.').removeprefix('train.')} {old.get(key)} in the checkpoint, "
                       f"{new.get(key)} now")
    return out


def _resume_points(train_config: TrainConfig, method: str, settings: str) -> tuple[dict | None, dict | None]:
    """The checkpoints `--resume` continues the first phase (admm, djpq) and the masked retraining from;
    refused unless the checkpoint's run had the same settings (`run_settings`)."""
    if not (train_config.resume and train_config.checkpoint and Path(train_config.checkpoint).is_file()):
        return None, None
    path = train_config.checkpoint
    state = load_checkpoint(path)
    if state.get("method") != method:
        raise OptionError(f"--resume: {path} is a checkpoint of a {state.get('method')} run, not {method}")
    if "settings" not in state:
        raise OptionError(f"--resume: {path} does not record its run's settings (an older onnxjpq wrote it); "
                          "run without --resume to start again")
    differences = setting_differences(state["settings"], settings)
    if differences:
        raise OptionError(f"--resume: {path} was written with other settings: {'; '.join(differences[:4])}"
                          + (f" (and {len(differences) - 4} more)" if len(differences) > 4 else "")
                          + "; give the same settings, or run without --resume to start again")
    if state["phase"] != "masked":
        return state, None
    return state["previous"], state


def _tap_inputs(model: onnx.ModelProto, selection: Selection, notes: list[str]):
    """The model with taps on its layers' inputs for DJPQ's activation quantizers (`graph.taps`),
    upgraded to the opset their QDQ form needs; unchanged, with a note, where it cannot be."""
    upgraded = upgrade(model, TAP_OPSET)
    if upgraded is None:
        notes.append(f"layer inputs kept float: onnx cannot convert the model to opset {TAP_OPSET}, which the "
                     "activations' QuantizeLinear needs")
        return model, {}
    return tap_layer_inputs(upgraded, find_model_layers(upgraded, selection)[0])


def _djpq_phase(model, module, layers, config: DjpqConfig, data, train_config, teacher, log_epoch, on_step,
                resume_from: dict | None = None, settings: str | None = None, scales: dict | None = None,
                taps: dict | None = None):
    """Train quantizers, gates and weights together; leave the module holding the learned weights
    (codes x steps) with the weight quantizers removed (the activation quantizers stay, frozen),
    and return the plan giving them, the learned bits and what each tap is written as."""
    shapes = tensor_shapes(model, {name: array.shape for name, array in data.inputs.items()})
    macs = data_macs(model, layers, data)
    if any(v is None for v in macs.values()):
        raise OptionError("DJPQ needs every layer's MACs: shape inference could not find them")
    samples = [values[:RANGE_SAMPLES] for values in data.inputs.values()]
    state = DjpqState(module, layers, macs, config, shapes, scales, taps, samples)

    def end_epoch(epoch: int, entry: dict) -> None:
        entry["bops_ratio"] = state.bops_ratio()
        log_epoch(epoch, entry)

    joint = replace(train_config, epochs=config.epochs, lr=config.lr, optimizer="adam")
    train(module, data, joint, teacher, end_epoch, on_step, regularizer=state.penalty, resume_from=resume_from,
          tag={"method": "djpq", "phase": "djpq", "settings": settings})
    pruned = state.meet_budget()
    reached = float(state.bops_ratio()) if state.bops() > state.budget else None
    arrays, plan = state.export()
    plan.diagnostics["channels_pruned_to_meet_budget"] = pruned
    if reached is not None:
        links = len(state.links)
        plan.diagnostics["budget_missed"] = (
            f"DJPQ reached {reached:.1f}x fewer BOPs, not the {config.rate:g}x asked: the bits stopped above "
            f"the floor of {config.min_bits} and " + (f"only {links} layers' input channels follow" if links else
                                                       "no layer's input channels follow")
            + " a prunable channel exactly (an op between them that maps zero elsewhere, such as an added bias or "
            "HardSigmoid, keeps a zero channel from staying zero); pruning after training could not close the gap, "
            "so it pruned nothing; more --epochs or a higher --lr move the bits further")
    inputs = state.tap_quantizers()
    state.detach()
    with torch.no_grad():
        for name, values in arrays.items():
            module.parameter(name).copy_(torch.from_numpy(values))
    return plan, plan.diagnostics["learned_bits"], inputs


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
                on_step, resume_from: dict | None = None, settings: str | None = None):
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
          regularizer=state.penalty, resume_from=resume_from, extra=state,
          tag={"method": "admm", "phase": "admm", "settings": settings})
    _, plan = project(layers, state.weights(), config.rate, fixed, 32.0 * n_float, total)
    return plan


def _all_outputs(model: onnx.ModelProto, data: Dataset, batch: int = 256) -> list[np.ndarray]:
    sess = session(model)
    chunks = [sess.run(None, {k: v[i:i + batch] for k, v in data.inputs.items()})
              for i in range(0, len(data), batch)]
    return [np.concatenate(parts) for parts in zip(*chunks)]
