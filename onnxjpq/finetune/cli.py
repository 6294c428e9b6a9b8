"""The `onnxjpq finetune` command's work: files in, progress out."""

from __future__ import annotations

import json
from pathlib import Path

from ..pipeline.compress import OutputConfig
from ..errors import OptionError
from ..graph.io import check_output_path, file_bytes, load_model, save_model, write_text_atomic
from ..pipeline.report import print_report
from ..runtime.data import load_dataset
from ..runtime.sessions import open_session
from .train import TrainConfig


def run_finetune(src, dst, data_path, val_path, method, config, selection, train_options: dict, int4: bool,
                 report_path, console) -> dict:
    from rich.progress import Progress

    from .run import finetune
    from .train import distributed

    dst = check_output_path(src, dst)
    rank, world = distributed()
    if rank != 0:  # under torchrun only the first process talks and writes
        console.quiet = True
    model = load_model(src)
    sess = open_session(model)
    data = load_dataset(data_path, sess)
    val = load_dataset(val_path, sess) if val_path else None
    train_config = TrainConfig(**train_options)
    if train_config.resume and not Path(train_config.checkpoint).is_file():
        raise OptionError(f"--resume: no checkpoint at {train_config.checkpoint}")
    epochs = train_config.epochs + (config.retrain_epochs if method != "masked" else 0)
    steps = epochs * -(-len(data) // train_config.batch)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fine-tuning", total=steps)

        def on_epoch(epoch: int, entry: dict) -> None:
            acc = f"  accuracy {entry['accuracy']:.2f}%" if "accuracy" in entry else ""
            target = f"  target rate {entry['target_rate']:.1f}x" if "target_rate" in entry else ""
            target += f"  BOPs {entry['bops_ratio']:.1f}x fewer" if "bops_ratio" in entry else ""
            console.print(f"{entry.get('phase', '')} epoch {entry['epoch']}  loss {entry['loss']:.4f}{acc}{target}")

        out, report = finetune(model, config, data, train_config, method, selection, OutputConfig(int4=int4),
                               val, on_epoch, lambda: progress.advance(task))
    if rank != 0:
        return report
    report["finetune"]["processes"] = world
    report["totals"].update(bytes_in=file_bytes(src), bytes_out=save_model(out, dst))
    report["totals"]["file_ratio"] = report["totals"]["bytes_in"] / report["totals"]["bytes_out"]
    if report_path:
        write_text_atomic(report_path, json.dumps(report, indent=2, default=str) + "\n")
    print_report(report, console)
    ft = report["finetune"]
    if ft["accuracy_before"] is not None and ft["history"] and "accuracy" in ft["history"][-1]:
        console.print(f"accuracy: fp32 {ft['accuracy_fp32']:.2f}%, compressed before retraining "
                      f"{ft['accuracy_before']:.2f}%, after {ft['history'][-1]['accuracy']:.2f}%")
    console.print(f"wrote {dst}")
    return report
