"""Running models in onnxruntime on .npz data: outputs, accuracy, agreement."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Model inputs stacked along axis 0, and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def session(model: str | os.PathLike | bytes | onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def load_dataset(path: str | os.PathLike, sess: ort.InferenceSession, labels_key: str = "labels") -> Dataset:
    """Read an .npz holding one array per model input (and optionally labels)."""
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    expected = {i.name: i for i in sess.get_inputs()}
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise DataError(f"{path}: no array for model input(s) {', '.join(missing)}; the model expects "
                        + ", ".join(f"{i.name} {i.shape}" for i in expected.values())
                        + f"; the file has {', '.join(arrays) or 'nothing'}")
    inputs = {name: arrays[name] for name in expected}
    lengths = {len(a) for a in inputs.values()}
    labels = arrays.get(labels_key)
    if labels is not None:
        lengths.add(len(labels))
    if len(lengths) != 1:
        raise DataError(f"{path}: arrays have different lengths along axis 0: {sorted(lengths)}")
    return Dataset(inputs, labels)


def predict(sess: ort.InferenceSession, data: Dataset, batch: int = 256, output: int = 0) -> np.ndarray:
    """One output of the model over the whole dataset, run in batches."""
    outs = []
    for start in range(0, len(data), batch):
        feed = {k: v[start:start + batch] for k, v in data.inputs.items()}
        outs.append(sess.run(None, feed)[output])
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean() * 100)
