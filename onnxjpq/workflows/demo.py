"""`onnxjpq demo`: the bundled digits CNN compressed at a few settings, checked in onnxruntime."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .compress import compress_file
from ..errors import ModelError
from ..methods.annc import AnncConfig
from ..methods.opq import OpqConfig
from ..runtime.data import load_dataset
from ..runtime.sessions import accuracy, predict, session

DEMO_SETTINGS = (
    ("--prune 0.5 --bits 4", OpqConfig(prune=0.5, bits=4.0)),
    ("--prune 0.8 --bits 4", OpqConfig(prune=0.8, bits=4.0)),
    ("--prune 0.9 --bits 3", OpqConfig(prune=0.9, bits=3.0)),
    ("--rate 16", AnncConfig(rate=16.0)),
    ("--rate 24", AnncConfig(rate=24.0)),
)


def bundled_models_dir() -> Path:
    """models/ of the source checkout (or the working folder's models/)."""
    for candidate in (Path("models"), Path(__file__).resolve().parent.parent / "models"):
        if (candidate / "lenet5.onnx").is_file():
            return candidate
    raise ModelError("bundled models not found: run from the onnxjpq checkout or pass --models")


def run_demo(models_dir=None, out_dir=None, settings=DEMO_SETTINGS) -> list[dict]:
    """fp32 and compressed accuracy of lenet5 on its held-out test split."""
    models = Path(models_dir) if models_dir else bundled_models_dir()
    src, test = models / "lenet5.onnx", models / "lenet5_test.npz"
    for path in (src, test):
        if not path.is_file():
            raise ModelError(f"{path}: not found")
    data = load_dataset(test, session(src))
    rows = [{"setting": "fp32", "accuracy": accuracy(predict(session(src), data), data.labels),
             "bytes": src.stat().st_size}]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for i, (label, config) in enumerate(settings):
            dst = folder / f"lenet5_{i}.onnx"
            report = compress_file(src, dst, config)
            t = report["totals"]
            rows.append({"setting": label, "prune_ratio": t["prune_ratio"],
                         "avg_bits": t["avg_bits"], "rate": t["rate"], "storage_rate": t["storage_rate"],
                         "bytes": t["bytes_out"],
                         "accuracy": accuracy(predict(session(dst), data), data.labels)})
    return rows


def print_demo(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="LeNet-5-style CNN, digits test split, onnxruntime")
    for col in ("setting", "pruned", "bits", "rate", "storage", "file KB", "accuracy"):
        table.add_column(col, justify="left" if col == "setting" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["setting"], f"{r.get('prune_ratio', 0):.1%}", f"{r.get('avg_bits', 32):.2f}",
                      f"{r.get('rate', 1):.1f}x", f"{r.get('storage_rate', 1):.1f}x",
                      f"{r['bytes'] / 1024:.1f}", f"{r['accuracy']:.2f}%")
    console.print(table)
