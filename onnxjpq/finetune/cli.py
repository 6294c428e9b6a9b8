"""The `onnxjpq finetune` command's work: files in, progress out."""

from __future__ import annotations

import json
from pathlib import Path

from ..compress import OutputConfig
from ..errors import OptionError
from ..io import check_output_path, file_bytes, load_model, save_model, write_text_atomic
from ..report import print_report
from ..validate import load_dataset, session
from .train import TrainConfig


def run_finetune(src, dst, data_path, val_path, method, config, selection, train_options: dict, int4: bool,
                 report_path, console) -> dict:
    from rich.progress import Progress

    from .run import finetune

    dst = check_output_path(src, dst)
    model = load_model(src)
    sess = session(model)
    data = load_dataset(data_path, sess)
    val = load_dataset(val_path, sess) if val_path else None
    train_config = TrainConfig(**train_options)
    if train_config.resume and not Path(train_config.checkpoint).is_file():
        raise OptionError(f"--resume: no checkpoint at {train_config.checkpoint}")
    steps = train_config.epochs * -(-len(data) // train_config.batch)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fine-tuning", total=steps)

        def on_epoch(epoch: int, entry: dict) -> None:
            progress.update(task, completed=(epoch + 1) * -(-len(data) // train_config.batch))
            acc = f"  accuracy {entry['accuracy']:.2f}%" if "accuracy" in entry else ""
            console.print(f"epoch {entry['epoch']}/{train_config.epochs}  loss {entry['loss']:.4f}{acc}")

        out, report = finetune(model, config, data, train_config, method, selection, OutputConfig(int4=int4),
                               val, on_epoch, lambda: progress.advance(task))
    report["totals"].update(bytes_in=file_bytes(src), bytes_out=save_model(out, dst))
    report["totals"]["file_ratio"] = report["totals"]["bytes_in"] / report["totals"]["bytes_out"]
    if report_path:
        write_text_atomic(report_path, json.dumps(report, indent=2, default=str) + "\n")
    print_report(report, console)
    ft = report["finetune"]
    if ft["accuracy_before"] is not None and ft["history"] and "accuracy" in ft["history"][-1]:
        console.print(f"accuracy before fine-tuning {ft['accuracy_before']:.2f}%, after "
                      f"{ft['history'][-1]['accuracy']:.2f}%")
    console.print(f"wrote {dst}")
    return report
