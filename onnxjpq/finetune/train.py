"""The training loop shared by the fine-tuning methods: data, loss, schedule, checkpoints.

With labels the loss is cross-entropy on the first output; without, the
model is distilled from the original's outputs (mean squared error over all
outputs), so unlabeled inputs are enough.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import OptionError
from ..runtime.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    batch: int = 64
    momentum: float = 0.9
    optimizer: str = "sgd"
    seed: int = 0
    checkpoint: str | None = None  # saved after every epoch; --resume continues from it
    resume: bool = False  # `finetune` reads the checkpoint and hands `train` what to continue from

    def __post_init__(self):
        if self.epochs < 1 or self.batch < 1 or not 0 < self.lr < math.inf:
            raise OptionError(f"epochs and batch must be >= 1 and lr a finite number > 0, got epochs "
                              f"{self.epochs}, batch {self.batch}, lr {self.lr:g}")
        if self.optimizer not in ("sgd", "adam"):
            raise OptionError(f"optimizer must be sgd or adam, got {self.optimizer!r}")


def _loss(outputs: list[torch.Tensor], labels: torch.Tensor | None, targets: list[torch.Tensor]) -> torch.Tensor:
    if labels is not None:
        return F.cross_entropy(outputs[0].reshape(len(labels), -1), labels)
    return sum(F.mse_loss(o, t) for o, t in zip(outputs, targets))


def _param_groups(module: torch.nn.Module, lr: float) -> list[dict]:
    """One group per learning-rate scale: `module.lr_scales` maps parameters to multipliers."""
    scales = getattr(module, "lr_scales", {})
    groups: dict[float, list] = {}
    for p in module.parameters():
        groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr": lr * scale} for scale, ps in groups.items()]


def _optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def _save_checkpoint(path: str, state: dict) -> None:
    """Write atomically (`io.atomic_file`: a temporary file in the folder, removed if the
    save fails or is interrupted), so a killed run leaves the previous epoch's checkpoint."""
    from ..graph.io import atomic_file

    with atomic_file(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str) -> dict:
    """A checkpoint `train` wrote: plain tensors, dicts, lists, strings and numbers only."""
    return torch.load(path, weights_only=True)


def distributed() -> tuple[int, int]:
    """(rank, world size): under torchrun the gloo process group is joined on first use."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def train(module: torch.nn.Module, data: Dataset, config: TrainConfig, teacher: list[np.ndarray] | None = None,
          on_epoch: Callable[[int, dict], None] | None = None, on_step: Callable[[], None] | None = None,
          regularizer: Callable[[], torch.Tensor] | None = None, resume_from: dict | None = None,
          extra=None, tag: dict | None = None) -> list[dict]:
    """Train `module` on `data`; returns one log entry per epoch (loss, and what on_epoch adds).

    `regularizer()` is added to every batch's loss (ADMM's proximal term). Under
    torchrun each process takes its share of every batch and DistributedDataParallel
    averages the gradients, so N processes follow the same path as one.

    After every epoch `config.checkpoint` gets the module, optimiser, schedule,
    random state and history, `extra.state_dict()` (a method's own state, e.g.
    ADMM's V, U and ρ) and the entries of `tag` (saved as they are).
    `resume_from`, such a checkpoint, is continued from its next epoch, so the
    run ends as an uninterrupted one would.
    """
    torch.manual_seed(config.seed)
    rank, world = distributed()
    runner = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        runner = DistributedDataParallel(module)
    optimizer = _optimizer(_param_groups(module, config.lr), config)
    steps_per_epoch = math.ceil(len(data) / config.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / (config.epochs * steps_per_epoch))))
    history, start = [], 0
    if resume_from is not None:
        module.load_state_dict(resume_from["module"])
        optimizer.load_state_dict(resume_from["optimizer"])
        schedule.load_state_dict(resume_from["schedule"])
        if extra is not None:
            extra.load_state_dict(resume_from["extra"])
        torch.set_rng_state(resume_from["rng"])  # DJPQ's gate noise
        history, start = list(resume_from["history"]), resume_from["epoch"] + 1
    names = list(data.inputs)
    for epoch in range(start, config.epochs):
        order = np.random.default_rng(config.seed + epoch).permutation(len(data))
        total = 0.0
        module.train()
        for i in range(0, len(data), config.batch):
            batch = order[i:i + config.batch]
            idx = batch[rank::world]
            inputs = [torch.from_numpy(data.inputs[n][idx]) for n in names]
            labels = torch.from_numpy(data.labels[idx]).long() if data.labels is not None else None
            targets = [torch.from_numpy(t[idx]) for t in teacher] if teacher is not None else []
            loss = _loss(runner(*inputs), labels, targets)
            objective = loss + regularizer() if regularizer else loss
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                raise OptionError(f"training diverged in epoch {epoch + 1} (loss {value}); lower --lr")
            total += value * len(batch)
            if on_step:
                on_step()
        entry = {"epoch": epoch + 1, "loss": total / len(data)}
        if on_epoch:
            on_epoch(epoch, entry)
        history.append(entry)
        if config.checkpoint and rank == 0:
            _save_checkpoint(config.checkpoint, {
                **(tag or {}), "epoch": epoch, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "history": history, "rng": torch.get_rng_state(),
                "extra": extra.state_dict() if extra is not None else None})
    return history
