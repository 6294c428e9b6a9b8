"""Data for models: datasets and batches from .npz files or entry points, checked against a session.

Data comes from an .npz file (one array per model input, samples stacked
along axis 0, optional labels) or from a `module:function` entry point whose
function returns or yields feed dicts (input name → batch array, optional
labels under the labels key). Both are checked against the model's declared
inputs (names, rank, fixed dimensions, dtype) with a one-line `DataError`.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import DataError, first_line
from .sessions import fixed_batch


@dataclass(frozen=True)
class Dataset:
    """Model inputs stacked along axis 0, and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def load_dataset(path: str | os.PathLike, sess: ort.InferenceSession, labels_key: str = "labels") -> Dataset:
    """Read an .npz holding one array per model input (and optionally labels)."""
    arrays = _read_npz(path)
    expected = {i.name: i for i in sess.get_inputs()}
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise DataError(f"{path}: no array for model input(s) {', '.join(missing)}; the model expects "
                        + ", ".join(f"{i.name} {i.shape}" for i in expected.values())
                        + f"; the file has {', '.join(arrays) or 'nothing'}")
    inputs = {name: arrays[name] for name in expected}
    labels = arrays.get(labels_key)
    scalars = [name for name, a in [*inputs.items(), (labels_key, labels)] if a is not None and a.ndim == 0]
    if scalars:
        raise DataError(f"{path}: {', '.join(scalars)} is a single value; stack the samples along axis 0")
    if labels is not None:
        labels = check_labels(labels, str(path))
    lengths = {len(a) for a in inputs.values()}
    if labels is not None:
        lengths.add(len(labels))
    if len(lengths) != 1:
        raise DataError(f"{path}: arrays have different lengths along axis 0: {sorted(lengths)}")
    if lengths == {0}:
        raise DataError(f"{path}: no samples")
    check_inputs(inputs, sess, str(path))
    return Dataset(inputs, labels)


def check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Labels as int64 class indices: integers, or floats holding whole numbers."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        return labels.astype(np.int64)
    raise DataError(f"{source}: labels must be integer class indices, got {labels.dtype}"
                    + (" with fractions, NaN or Inf" if labels.dtype.kind == "f" else ""))


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, never unpickling anything (object arrays are refused)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz file of named arrays")
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds pickled Python objects, which are never loaded; "
                            "save plain numeric arrays") from None
        raise DataError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    except (OSError, EOFError, KeyError, RuntimeError, NotImplementedError, UnicodeDecodeError, struct.error,
            zipfile.BadZipFile, zlib.error) as exc:  # what zipfile and numpy raise on damaged archives
        raise DataError(f"{path}: not a readable .npz file ({first_line(exc)})") from None


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _declared_dtype(arg) -> np.dtype | None:
    """numpy dtype of an onnxruntime input type such as 'tensor(float)' (None if not a plain tensor)."""
    match = re.fullmatch(r"tensor\((\w+)\)", arg.type or "")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.DataType.Value(match[1].upper())))
    except (TypeError, ValueError, KeyError):
        return None
    return None if dtype == np.object_ else dtype


def check_inputs(arrays: dict[str, np.ndarray], sess: ort.InferenceSession, source: str) -> None:
    """Each array must have its input's rank, declared fixed sizes (axis 0, the samples, aside) and dtype."""
    for arg in sess.get_inputs():
        array, declared = arrays[arg.name], arg.shape
        if array.ndim == 0:
            raise DataError(f"{source}: input {arg.name!r} is a single value; stack the samples along axis 0")
        if not isinstance(declared, list):
            continue
        expects = f"the model expects {arg.name} {_shape_text(declared)} (samples stacked along axis 0)"
        if array.ndim != len(declared):
            raise DataError(f"{source}: input {arg.name!r} has shape {list(array.shape)} (rank {array.ndim}); "
                            + expects)
        wrong = [i for i, (d, n) in enumerate(zip(declared, array.shape))
                 if i > 0 and isinstance(d, int) and d > 0 and d != n]
        if wrong:
            raise DataError(f"{source}: input {arg.name!r} has shape {list(array.shape)}, size "
                            f"{array.shape[wrong[0]]} on axis {wrong[0]}; " + expects)
        dtype = _declared_dtype(arg)
        if dtype is not None and array.dtype != dtype:
            raise DataError(f"{source}: input {arg.name!r} is {array.dtype}; the model expects {dtype}")


# ---------------------------------------------------------------- batches


Labels = np.ndarray | None


@dataclass(frozen=True)
class Batches:
    """Re-iterable (feed, labels) batches; each pass reads the source again."""

    make: Callable[[], Iterator[tuple[dict[str, np.ndarray], Labels]]]
    samples: int | None  # None when the source cannot tell before it is read
    count: int | None  # number of batches, likewise
    labelled: bool | None  # whether labels come with the batches (None: not known before reading)

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], Labels]]:
        return self.make()


_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def is_entry_point(spec: str | os.PathLike) -> bool:
    """True for 'package.module:function' (and no file of that name)."""
    return _ENTRY_POINT.fullmatch(str(spec)) is not None and not Path(spec).exists()


def open_batches(spec: str | os.PathLike, sess: ort.InferenceSession, batch: int = 64,
                 labels_key: str = "labels") -> Batches:
    """Batches of at most `batch` samples from an .npz file or a `module:function` entry point."""
    fixed = fixed_batch(sess)
    size = fixed or batch
    if is_entry_point(spec):
        func = _resolve(str(spec))
        return Batches(lambda: _entry_batches(str(spec), func, sess, size, fixed is not None, labels_key),
                       None, None, None)
    data = load_dataset(spec, sess, labels_key)
    if len(data) == 0:
        raise DataError(f"{spec}: no samples")
    if fixed and len(data) % fixed:
        raise DataError(f"{spec}: {len(data)} samples do not split into the model's fixed batch size {fixed}")
    return Batches(lambda: _slices(data, size), len(data), -(-len(data) // size), data.labels is not None)


def _slices(data: Dataset, size: int) -> Iterator[tuple[dict[str, np.ndarray], Labels]]:
    for start in range(0, len(data), size):
        labels = None if data.labels is None else data.labels[start:start + size]
        yield {k: v[start:start + size] for k, v in data.inputs.items()}, labels


def _resolve(spec: str) -> Callable:
    """Import `module:function`, the working folder first on the path (as `python -m` has it)."""
    module_name, func_name = spec.split(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"--data {spec}: neither a file nor an importable module ({exc})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"--data {spec}: module {module_name} has no function {func_name}")
    return func


def _entry_batches(spec: str, func: Callable, sess: ort.InferenceSession, size: int, fixed: bool,
                   labels_key: str) -> Iterator[tuple[dict[str, np.ndarray], Labels]]:
    """The function's feed dicts, checked, split into batches of at most `size`."""
    produced = func()
    items: Iterable = [produced] if isinstance(produced, dict) else produced
    names, labelled, seen = [arg.name for arg in sess.get_inputs()], None, 0
    for i, item in enumerate(items):
        where = f"--data {spec}, item {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a dict of input name -> array, got {type(item).__name__}")
        unknown = sorted(set(item) - set(names) - {labels_key})
        missing = [n for n in names if n not in item]
        if unknown or missing:
            raise DataError(f"{where}: keys {sorted(item)}; the model's inputs are {', '.join(names)}"
                            f" (labels under {labels_key!r})")
        if labelled is not None and labelled != (labels_key in item):
            raise DataError(f"{where}: {labels_key!r} given for some batches and not others")
        labelled = labels_key in item
        feed = {n: np.asarray(item[n]) for n in names}
        check_inputs(feed, sess, where)
        labels = check_labels(item[labels_key], where) if labelled else None
        if labels is not None and labels.ndim == 0:
            raise DataError(f"{where}: {labels_key!r} is a single value; give one label per sample")
        lengths = {len(a) for a in feed.values()} | ({len(labels)} if labelled else set())
        if len(lengths) != 1:
            raise DataError(f"{where}: arrays have different lengths along axis 0: {sorted(lengths)}")
        n = lengths.pop()
        if fixed and n % size:
            raise DataError(f"{where}: {n} samples do not split into the model's fixed batch size {size}")
        for start in range(0, n, size):
            yield ({k: v[start:start + size] for k, v in feed.items()},
                   None if labels is None else labels[start:start + size])
        seen += n
    if seen == 0:
        raise DataError(f"--data {spec}: the function gave no samples")


