"""Data for models: datasets and batches from .npz files or entry points, checked against a session.

Data comes from an .npz file (one array per model input, samples stacked
along axis 0, optional labels; read by `npz.read_npz`, which trusts nothing in
the file) or from a `module:function` entry point whose function returns or
yields feed dicts (input name → batch array, optional labels under the labels
key). Both are checked against the model's declared inputs (names, rank,
fixed dimensions, dtype) and refused when a float input holds NaN or Inf,
with a one-line `DataError` naming the input and the sample. The labels are
the array named by `--labels`; by default `labels`, else the one of label, y,
targets, target, labels_true that is present (`Dataset.labels_key` says which);
`none` uses none. Whatever an entry point does (raise, return None, yield
ragged arrays, call sys.exit) ends in one line naming it, its exception kept
as the cause.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import DataError, first_line
from .npz import read_npz
from .sessions import fixed_batch


LABEL_NAMES = ("labels", "label", "y", "targets", "target", "labels_true")  # tried in this order
NO_LABELS = "none"  # --labels none: use no array as labels


@dataclass(frozen=True)
class Dataset:
    """Model inputs stacked along axis 0, optional integer labels, and the array they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    labels_key: str | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def labels_name(available, asked: str, inputs, source: str) -> str | None:
    """Which array holds the labels: `asked` if present; for the default 'labels', the one
    common name present (label, y, targets, target, labels_true); None when there are none."""
    available = [n for n in available if n not in set(inputs)]
    if asked == NO_LABELS:
        return None
    if asked in available:
        return asked
    if asked != LABEL_NAMES[0]:
        raise DataError(f"{source}: no labels array {asked!r} (--labels); it has "
                        f"{', '.join(available) or 'nothing'} besides the model inputs")
    found = [n for n in LABEL_NAMES if n in available]
    if len(found) > 1:
        raise DataError(f"{source}: several arrays could be the labels ({', '.join(found)}); choose one with "
                        f"--labels NAME (or --labels {NO_LABELS})")
    return found[0] if found else None


def load_dataset(path: str | os.PathLike, sess: ort.InferenceSession, labels_key: str = "labels") -> Dataset:
    """Read an .npz holding one array per model input (and optionally labels; see `labels_name`)."""
    expected = {i.name: i for i in sess.get_inputs()}
    found: list[str | None] = []

    def wanted(names: list[str]) -> list[str]:
        missing = [name for name in expected if name not in names]
        if missing:
            raise DataError(f"{path}: no array for model input(s) {', '.join(missing)}; the model expects "
                            + ", ".join(f"{i.name} {i.shape}" for i in expected.values())
                            + f"; the file has {', '.join(names) or 'nothing'}")
        found.append(labels_name(names, labels_key, expected, str(path)))
        return [*expected, *([found[-1]] if found[-1] else [])]

    arrays = read_npz(path, wanted)
    key = found[0]
    inputs = {name: arrays[name] for name in expected}
    labels = arrays.get(key) if key else None
    scalars = [name for name, a in [*inputs.items(), (key, labels)] if a is not None and a.ndim == 0]
    if scalars:
        raise DataError(f"{path}: {', '.join(scalars)} is a single value; stack the samples along axis 0")
    if labels is not None:
        labels = check_labels(labels, str(path), key, labels_key)
    lengths = {len(a) for a in inputs.values()}
    if labels is not None:
        lengths.add(len(labels))
    if len(lengths) != 1:
        raise DataError(f"{path}: arrays have different lengths along axis 0: {sorted(lengths)}")
    if lengths == {0}:
        raise DataError(f"{path}: no samples")
    check_inputs(inputs, sess, str(path))
    check_finite(inputs, str(path))
    return Dataset(inputs, labels, key)


def check_labels(labels: np.ndarray, source: str, key: str = "labels", asked: str = "labels") -> np.ndarray:
    """Labels as int64 class indices: integers, or floats holding whole numbers."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        return labels.astype(np.int64)
    named = "labels" if key == LABEL_NAMES[0] else f"labels {key!r}"
    if key != asked:
        named += f" (taken as the labels; --labels NAME picks another, --labels {NO_LABELS} none)"
    raise DataError(f"{source}: {named} must be integer class indices, got {labels.dtype}"
                    + (" with fractions, NaN or Inf" if labels.dtype.kind == "f" else ""))


def _nonfinite_samples(array: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Indices along axis 0 of the samples holding NaN or Inf (read in chunks: bounded memory)."""
    found = [np.flatnonzero(~np.isfinite(array[i:i + chunk].reshape(min(chunk, len(array) - i), -1)).all(axis=1)) + i
             for i in range(0, len(array), chunk)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def check_finite(arrays: dict[str, np.ndarray], source: str) -> None:
    """Refuse float inputs holding NaN or Inf, naming the input and the first such sample."""
    for name, array in arrays.items():
        if array.dtype.kind not in "fc" or array.ndim == 0:
            continue
        bad = _nonfinite_samples(array)
        if len(bad):
            what = "NaN" if np.isnan(array[int(bad[0])]).any() else "Inf"
            raise DataError(f"{source}: input {name!r} has {what} in sample {int(bad[0])} "
                            f"({len(bad)} of {len(array)} samples are not finite); remove or repair them")


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
        if array.dtype.hasobject:
            raise DataError(f"{source}: input {arg.name!r} is not a numeric array (it holds Python objects)")
        if dtype is not None and array.dtype != dtype:
            raise DataError(f"{source}: input {arg.name!r} is {array.dtype}; the model expects {dtype}")


# ---------------------------------------------------------------- batches


Labels = np.ndarray | None


@dataclass(frozen=True)
class Batches:
    """Re-iterable (feed, labels) batches; each pass reads the source again. `info` gets the
    labels' array or key ('labels_key') once known (an entry point's: after its first item)."""

    make: Callable[[], Iterator[tuple[dict[str, np.ndarray], Labels]]]
    samples: int | None  # None when the source cannot tell before it is read
    count: int | None  # number of batches, likewise
    labelled: bool | None  # whether labels come with the batches (None: not known before reading)
    info: dict = field(default_factory=dict, compare=False)

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
        func, info = _resolve(str(spec)), {}
        return Batches(lambda: _entry_batches(str(spec), func, sess, size, fixed is not None, labels_key, info),
                       None, None, None, info)
    data = load_dataset(spec, sess, labels_key)
    if len(data) == 0:
        raise DataError(f"{spec}: no samples")
    if fixed and len(data) % fixed:
        raise DataError(f"{spec}: {len(data)} samples do not split into the model's fixed batch size {fixed}")
    return Batches(lambda: _slices(data, size), len(data), -(-len(data) // size), data.labels is not None,
                   {"labels_key": data.labels_key})


def _slices(data: Dataset, size: int) -> Iterator[tuple[dict[str, np.ndarray], Labels]]:
    for start in range(0, len(data), size):
        labels = None if data.labels is None else data.labels[start:start + size]
        yield {k: v[start:start + size] for k, v in data.inputs.items()}, labels


# ---------------------------------------------------------------- entry points


def _failure(exc: BaseException) -> str:
    """What went wrong in the user's code, in a few words."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _guarded(spec: str, doing: str, call: Callable):
    """call(), any failure of the user's code (sys.exit included) as a one-line DataError naming the
    entry point; the original exception stays as the cause (eval --debug prints its traceback)."""
    try:
        return call()
    except DataError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code may raise anything
        raise DataError(f"--data {spec}: {doing} failed: {_failure(exc)}") from exc


def _resolve(spec: str) -> Callable:
    """Import `module:function`, the working folder first on the path (as `python -m` has it)."""
    module_name, func_name = spec.split(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = _guarded(spec, f"importing {module_name}", lambda: importlib.import_module(module_name))
    except DataError as exc:
        cause = exc.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name and module_name.startswith(cause.name):
            raise DataError(f"--data {spec}: neither a file nor an importable module ({cause})") from None
        raise
    finally:
        if added:
            sys.path.remove(os.getcwd())
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"--data {spec}: module {module_name} has no function {func_name}")
    return func


def _items(spec: str, func: Callable) -> Iterator:
    """What the function gives, one feed dict at a time, its failures as one-line DataErrors."""
    produced = _guarded(spec, "calling it", func)
    if isinstance(produced, dict):
        yield produced
        return
    if produced is None or isinstance(produced, (str, bytes)) or not hasattr(produced, "__iter__"):
        kind = "None" if produced is None else type(produced).__name__
        raise DataError(f"--data {spec}: the function returned {kind}; return or yield "
                        "dicts of input name -> batch array")
    iterator = _guarded(spec, "iterating over what it returned", lambda: iter(produced))
    for i in itertools.count():
        item = _guarded(spec, f"reading item {i}", lambda: next(iterator, _END))
        if item is _END:
            return
        yield item


_END = object()


def _feed(item, names: list[str], labels_key: str, where: str) -> tuple[dict[str, np.ndarray], str | None]:
    """One item's arrays by input name, checked to be numeric, and the key of its labels."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a dict of input name -> array, got {type(item).__name__}")
    key = labels_name(item, labels_key, names, where)
    unknown = sorted(map(str, set(item) - set(names) - {key}))
    missing = [n for n in names if n not in item]
    if unknown or missing:
        raise DataError(f"{where}: keys {sorted(map(str, item))}; the model's inputs are {', '.join(names)}"
                        f" (labels under {labels_key!r})")
    feed = {}
    for name in names:
        try:
            feed[name] = np.asarray(item[name])
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise DataError(f"{where}: input {name!r} is not a numeric array ({first_line(exc)})") from None
        if feed[name].dtype.hasobject:
            raise DataError(f"{where}: input {name!r} is not a numeric array (it holds Python objects: ragged "
                            "or mixed values)")
    return feed, key


def _entry_batches(spec: str, func: Callable, sess: ort.InferenceSession, size: int, fixed: bool,
                   labels_key: str, info: dict) -> Iterator[tuple[dict[str, np.ndarray], Labels]]:
    """The function's feed dicts, checked, split into batches of at most `size`."""
    names, first_key, seen = [arg.name for arg in sess.get_inputs()], _END, 0
    for i, item in enumerate(_items(spec, func)):
        where = f"--data {spec}, item {i}"
        feed, key = _feed(item, names, labels_key, where)
        if first_key is not _END and key != first_key:
            raise DataError(f"{where}: {first_key or key!r} given for some batches and not others")
        first_key = info["labels_key"] = key
        check_inputs(feed, sess, where)
        check_finite(feed, where)
        labels = check_labels(item[key], where, key, labels_key) if key else None
        if labels is not None and labels.ndim == 0:
            raise DataError(f"{where}: {key!r} is a single value; give one label per sample")
        lengths = {len(a) for a in feed.values()} | ({len(labels)} if key else set())
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
