"""Reading and writing ONNX files.

`load_model` refuses what it cannot read with a `ModelError` (missing file, not
ONNX, truncated, external data outside the model's folder); `save_model`
writes atomically: a temporary file in the target folder, then `os.replace`,
so a failed run never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from .errors import ModelError, OptionError

_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data, checking every data location."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({_first_line(exc)})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    _load_external_data(model, path.parent.resolve())
    return model


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(model)
               if external_data_helper.uses_external_data(t)]
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (base / info.location).resolve()
        if base != target and base not in target.parents:
            raise ModelError(f"tensor {tensor.name!r}: external data location "
                             f"{info.location!r} leaves the model's folder")
        if not target.is_file():
            raise ModelError(f"tensor {tensor.name!r}: external data file {info.location!r} not found")
    if tensors:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read external data: {_first_line(exc)}") from None


def check_output_path(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Refuse an output path that would overwrite the input or cannot be written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise OptionError(f"output {dst} is the input file; choose another path")
    if dst.is_dir():
        raise OptionError(f"output {dst} is a folder; give a file name")
    if not dst.parent.resolve().is_dir():
        raise OptionError(f"output folder {dst.parent} does not exist")
    return dst


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write `model` to `path` atomically and return the bytes written.

    Models over protobuf's 2 GB limit get their tensors in `<name>.data` beside it.
    """
    path = Path(path)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        return _save_external(model, path)
    _write_atomic(path, model.SerializeToString(deterministic=True))
    return path.stat().st_size


def _save_external(model: onnx.ModelProto, path: Path) -> int:
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnxjpq-") as tmp:
        tmp_model = Path(tmp) / path.name
        onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name)
        os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)
    return path.stat().st_size + (path.parent / data_name).stat().st_size


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (a report) atomically."""
    _write_atomic(Path(path), text.encode())


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk, its external data files included."""
    path = Path(path)
    model = onnx.load_model(str(path), load_external_data=False)
    locations = {external_data_helper.ExternalDataInfo(t).location
                 for t in external_data_helper._get_all_tensors(model)
                 if external_data_helper.uses_external_data(t)}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def with_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers / Constant values named in `arrays` are replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(numpy_helper.from_array(arrays[tensor.name].astype(np.float32), tensor.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in arrays:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(arrays[node.output[0]].astype(np.float32)))
    return out
