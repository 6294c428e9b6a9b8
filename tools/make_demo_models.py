#!/usr/bin/env python3
"""Train and export the two small demo models used by onnxjpq.

The script trains, on scikit-learn's handwritten digits (1797 8x8 images with
pixel values 0..16):

* ``lenet5``   -- a LeNet-5-style CNN taking ``[N, 1, 8, 8]`` inputs;
* ``lenet300`` -- a LeNet-300-100-style MLP taking ``[N, 64]`` inputs.

Both are trained in plain torch on the CPU, fully deterministically, then
exported to ONNX (opset 17, dynamic batch dimension, input ``input``, output
``logits``, weights stored as initializers) with the legacy TorchScript
exporter.  For every model the output folder receives::

    <name>.onnx         the model
    <name>_train.npz    {"input": float32 inputs, "labels": int64 labels}
    <name>_test.npz     same, for the held-out split

All files are written atomically and are byte-identical across runs.  After
export each ONNX file is evaluated with onnxruntime on its test set and the
accuracy is checked against the torch accuracy.

Usage::

    python tools/make_demo_models.py [--out models] [--epochs 40]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 0
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)`` for the digits data.

    Images are flat ``[n, 64]`` float32 arrays scaled to [0, 1]; labels are
    int64.  The split is stratified, 25 % test, with ``random_state=0``.
    """
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def make_lenet5() -> nn.Module:
    """LeNet-5-style CNN for ``[N, 1, 8, 8]`` inputs (8x8 -> 4x4 -> 2x2)."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 64, 3, padding=1)),
        ("relu3", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(64 * 2 * 2, 120)),
        ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)),
        ("relu5", nn.ReLU()),
        ("fc3", nn.Linear(84, 10)),
    ]))


def make_lenet300() -> nn.Module:
    """LeNet-300-100-style MLP for ``[N, 64]`` inputs."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, 300)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, 10)),
    ]))


# name -> (constructor, per-sample input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet5": (make_lenet5, (1, 8, 8)),
    "lenet300": (make_lenet300, (64,)),
}


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def seed_everything(seed: int = SEED) -> None:
    """Make torch/numpy/random deterministic and single-threaded."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """Train ``model`` in place with Adam and cross-entropy."""
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,
                        generator=generator, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(1, epochs + 1):
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            print(f"    epoch {epoch:3d}  loss {total / len(dataset):.4f}")
    model.eval()


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


# --------------------------------------------------------------------------
# Export and file output
# --------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder.

    The file gets the usual ``0o666 & ~umask`` permissions (``mkstemp``
    would otherwise leave it at ``0o600``).
    """
    umask = os.umask(0)
    os.umask(umask)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Save ``{INPUT_NAME: x, "labels": y}`` as an uncompressed npz.

    ``np.savez`` writes zip entries with a fixed timestamp, so the output is
    byte-deterministic.
    """
    buf = io.BytesIO()
    np.savez(buf, **{INPUT_NAME: x, "labels": y})
    write_atomic(path, buf.getvalue())


def export_onnx(model: nn.Module, sample_shape: tuple[int, ...]) -> bytes:
    """Export ``model`` to ONNX bytes (opset 17, dynamic batch dimension)."""
    dummy = torch.zeros((1, *sample_shape), dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False is deliberate: the legacy exporter needs no onnxscript
        # and gives a plain, byte-deterministic graph with initializers.
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=".*legacy TorchScript-based ONNX")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def onnx_accuracy(path: Path, npz_path: Path) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` on the data in ``npz_path``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options,
                                   providers=["CPUExecutionProvider"])
    with np.load(npz_path) as data:
        feeds = {i.name: data[i.name] for i in session.get_inputs()}
        labels = data["labels"]
    (logits,) = session.run([OUTPUT_NAME], feeds)
    return float((logits.argmax(axis=1) == labels).mean())


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def build_one(name: str, out: Path, epochs: int, split) -> None:
    """Train, export, save and verify one model."""
    make, sample_shape = MODELS[name]
    x_train, x_test, y_train, y_test = split
    x_train = x_train.reshape(-1, *sample_shape)
    x_test = x_test.reshape(-1, *sample_shape)

    seed_everything()
    model = make()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {n_params} parameters, training {epochs} epochs")
    train(model, x_train, y_train, epochs)
    acc_torch = torch_accuracy(model, x_test, y_test)

    onnx_path = out / f"{name}.onnx"
    write_atomic(onnx_path, export_onnx(model, sample_shape))
    save_npz(out / f"{name}_train.npz", x_train, y_train)
    test_path = out / f"{name}_test.npz"
    save_npz(test_path, x_test, y_test)

    acc_onnx = onnx_accuracy(onnx_path, test_path)
    print(f"[{name}] test accuracy: torch {acc_torch:.4f}  "
          f"onnxruntime fp32 {acc_onnx:.4f}")
    if acc_onnx != acc_torch:
        raise SystemExit(f"{name}: onnxruntime and torch accuracies differ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"),
                        help="output folder (default: models)")
    parser.add_argument("--epochs", type=int, default=40,
                        help="training epochs per model (default: 40)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    split = load_split()
    for name in MODELS:
        build_one(name, args.out, args.epochs, split)
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
