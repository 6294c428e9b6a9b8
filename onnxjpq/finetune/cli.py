"""The `onnxjpq finetune` command's work: files in, progress out.

Before any work the outputs (the model, its `.data` file, the report, the
checkpoint) are checked against the inputs (the model and its external data,
--data, --val) and each other, and the model against onnx.checker. The
checkpoint is removed when the run succeeds (unless `keep_checkpoint`) and
when a run that wrote it fails; a run interrupted with Ctrl-C keeps it for
`--resume` and says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..pipeline.compress import OutputConfig
from ..errors import OptionError
from ..graph.io import check_model_valid, load_model, model_inputs, remove_model, save_model, \
    write_text_atomic
from ..graph.outputs import check_outputs
from ..pipeline.report import file_totals, print_report
from ..runtime.data import load_dataset
from ..runtime.sessions import open_session
from .train import TrainConfig


def _stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def run_finetune(src, dst, data_path, val_path, method, config, selection, train_options: dict, int4: bool,
                 report_path, console, keep_checkpoint: bool = False) -> dict:
    from .train import distributed

    checkpoint = train_options.get("checkpoint")
    check_outputs([*model_inputs(src), ("the --data file", data_path), ("the --val file", val_path)],
                  [("output", dst), ("output data file", f"{os.fspath(dst)}.data"), ("report", report_path),
                   ("checkpoint", checkpoint)])
    dst = Path(dst)
    rank, world = distributed()
    if rank != 0:  # under torchrun only the first process talks and writes
        console.quiet = True
    train_config = TrainConfig(**train_options)
    if train_config.resume and not Path(train_config.checkpoint).is_file():
        raise OptionError(f"--resume: no checkpoint at {train_config.checkpoint}")
    before = _stamp(checkpoint)
    try:
        report = _run(src, dst, data_path, val_path, method, config, selection, train_config, int4, report_path,
                      console, rank, world)
    except KeyboardInterrupt:
        if checkpoint and _stamp(checkpoint) is not None:
            raise KeyboardInterrupt(f"{checkpoint} holds the last finished epoch: rerun with --resume "
                                    "to continue") from None
        raise
    except BaseException:
        if checkpoint and rank == 0 and not train_config.resume and _stamp(checkpoint) != before:
            Path(checkpoint).unlink(missing_ok=True)  # this run's checkpoint: a failed run leaves nothing
        raise
    if checkpoint and rank == 0 and not keep_checkpoint:
        Path(checkpoint).unlink(missing_ok=True)
    return report


def _run(src, dst: Path, data_path, val_path, method, config, selection, train_config: TrainConfig, int4: bool,
         report_path, console, rank: int, world: int) -> dict:
    from rich.progress import Progress

    from .run import finetune

    model = load_model(src)
    check_model_valid(model, src)
    sess = open_session(model)
    data = load_dataset(data_path, sess)
    val = load_dataset(val_path, sess) if val_path else None
    where = "" if val is not None else " (training data)"
    epochs = train_config.epochs + (config.retrain_epochs if method != "masked" else 0)
    per_epoch = -(-len(data) // train_config.batch)
    steps = epochs * per_epoch
    on_training_data = val is None and data.labels is not None
    console.print(f"fine-tuning ({method}): {epochs} epochs of {per_epoch} steps on {len(data)} samples"
                  + ("; accuracy is measured on the training data (give --val)" if on_training_data else ""))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fine-tuning", total=steps)

        def on_epoch(epoch: int, entry: dict) -> None:
            acc = f"  accuracy {entry['accuracy']:.2f}%{where}" if "accuracy" in entry else ""
            target = f"  target rate {entry['target_rate']:.1f}x" if "target_rate" in entry else ""
            target += f"  BOPs {entry['bops_ratio']:.1f}x fewer" if "bops_ratio" in entry else ""
            console.print(f"{entry.get('phase', '')} epoch {entry['epoch']}  loss {entry['loss']:.4f}{acc}{target}")

        out, report = finetune(model, config, data, train_config, method, selection, OutputConfig(int4=int4),
                               val, on_epoch, lambda: progress.advance(task))
    if rank != 0:
        return report
    report["finetune"]["processes"] = world
    report["finetune"]["accuracy_on"] = "--val" if val is not None else "the training data (--data)"
    bytes_out = save_model(out, dst)
    try:  # no model without its report
        report["totals"].update(file_totals(src, dst, bytes_out))
        if report_path:
            write_text_atomic(report_path, json.dumps(report, indent=2, default=str) + "\n")
    except BaseException:
        remove_model(dst)
        raise
    print_report(report, console)
    ft = report["finetune"]
    if ft["accuracy_before"] is not None and ft["history"] and "accuracy" in ft["history"][-1]:
        console.print(f"accuracy{' on the training data' if val is None else ''}: fp32 {ft['accuracy_fp32']:.2f}%, "
                      f"compressed before retraining {ft['accuracy_before']:.2f}%, after "
                      f"{ft['history'][-1]['accuracy']:.2f}% (the written file in onnxruntime: "
                      f"{ft['accuracy_onnxruntime']:.2f}%)")
    console.print(f"wrote {dst}")
    return report
