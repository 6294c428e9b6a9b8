"""Reading and writing ONNX files.

`load_model` refuses what it cannot read with a `ModelError` (missing file, not
ONNX, truncated, external data outside the model's folder or past the end of
its file, declared dims that do not match the stored bytes), before reading
any tensor data, and gives it in `normalize.normalize_model`'s form (local
functions inlined, sparse Constants dense, IR 3 as 4); `load_model_lazy` does
the same and leaves the external data on disk. `save_model` writes
atomically: a temporary file in the target folder (named for `outputs.remove_stale`), then `os.replace`, so a failed
or interrupted run never leaves a half-written output; `check_output_path` and
`model_inputs` feed `outputs.check_outputs`, which refuses outputs that alias an
input; `check_model_valid` runs onnx.checker's full check. `ExternalWriter` writes a large model tensor by tensor (see
`onnxjpq.pipeline.stream`).
"""

from __future__ import annotations

import contextlib
import lzma
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from ..errors import ModelError, first_line
from .normalize import normalize_model
from .outputs import check_outputs, temp_prefix, umask, write_atomic
from .outputs import atomic_file, write_text_atomic  # noqa: F401  (re-exported: checkpoints and reports)

_PROTOBUF_LIMIT = 2**31 - 1
_COPY_CHUNK = 64 << 20
_ALIGN = 4096  # external tensors start on a page, so runtimes can map them


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data, checking every data location."""
    model = load_model_lazy(path)
    _load_external_data(model, Path(path).parent.resolve())
    return model


def load_model_lazy(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model, leaving its external data on disk (checked, not read)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        _check_tensor(tensor, base)
    for sparse in _sparse_tensors(model.graph):
        _check_sparse(sparse, base)
    return normalize_model(model, str(path))


def _check_tensor(tensor: onnx.TensorProto, base: Path) -> None:
    if external_data_helper.uses_external_data(tensor):
        external_span(tensor, base)
    else:
        _check_inline(tensor)


def _sparse_tensors(graph: onnx.GraphProto):
    for g in proto_graphs(graph):
        yield from g.sparse_initializer
        yield from (attr.sparse_tensor for node in g.node for attr in node.attribute
                    if attr.HasField("sparse_tensor"))


def _check_sparse(sparse: onnx.SparseTensorProto, base: Path) -> None:
    """A sparse tensor's values and indices must be consistent, and its dense form (what
    reading it as a weight builds) must fit in this machine's memory."""
    name = sparse.values.name
    _check_tensor(sparse.values, base)
    _check_tensor(sparse.indices, base)
    if any(d < 0 for d in sparse.dims):
        raise ModelError(f"sparse tensor {name!r}: negative dimension in {list(sparse.dims)}")
    dense = onnx.TensorProto(name=name, data_type=sparse.values.data_type, dims=list(sparse.dims))
    nbytes, memory = tensor_nbytes(dense), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes is not None and nbytes > memory:
        raise ModelError(f"sparse tensor {name!r}: dims {list(sparse.dims)} make {nbytes} bytes dense, "
                         f"more than this machine's memory ({memory})")
    nnz = sparse.values.dims[0] if sparse.values.dims else 0
    if list(sparse.indices.dims) not in ([nnz], [nnz, len(sparse.dims)]):
        raise ModelError(f"sparse tensor {name!r}: {nnz} values but indices of shape {list(sparse.indices.dims)}")


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type call for, or None for types without a fixed size.

    Refuses negative dims; Python integers, so absurd dims cannot overflow.
    """
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"tensor {tensor.name!r}: negative dimension in {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.kind in "OUS" else count * dtype.itemsize


_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(onnx.TensorProto, n)}


def external_span(tensor: onnx.TensorProto, base: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor, all checked against the file on disk."""
    name = tensor.name
    try:
        info = external_data_helper.ExternalDataInfo(tensor)
    except ValueError as exc:
        raise ModelError(f"tensor {name!r}: bad external data entry ({first_line(exc)})") from None
    target = (base / info.location).resolve()
    if base != target and base not in target.parents:
        raise ModelError(f"tensor {name!r}: external data location "
                         f"{info.location!r} leaves the model's folder")
    if not target.is_file():
        raise ModelError(f"tensor {name!r}: external data file {info.location!r} not found")
    size, offset = target.stat().st_size, info.offset or 0
    expected = tensor_nbytes(tensor)
    length = info.length if info.length is not None else (expected if expected is not None else size - offset)
    if expected is not None and length != expected:
        raise ModelError(f"tensor {name!r}: dims {list(tensor.dims)} need {expected} bytes, "
                         f"its external data holds {length}")
    if offset + length > size:
        raise ModelError(f"tensor {name!r}: external data bytes {offset}..{offset + length} run past "
                         f"the end of {info.location!r} ({size} bytes)")
    return target, offset, length


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_TWO_PER_VALUE = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def _check_inline(tensor: onnx.TensorProto) -> None:
    """Declared dims must match the values stored in the file."""
    expected = tensor_nbytes(tensor)
    if tensor.HasField("raw_data"):
        if expected is not None and len(tensor.raw_data) != expected:
            raise ModelError(f"tensor {tensor.name!r}: dims {list(tensor.dims)} need {expected} bytes, "
                             f"it stores {len(tensor.raw_data)}")
        return
    if (tensor.data_type == onnx.TensorProto.UNDEFINED or tensor.data_type in _PACKED_4BIT
            or tensor.data_type >= onnx.TensorProto.FLOAT8E4M3FN):
        return  # packed encodings in int32_data: left to onnx
    count = math.prod(tensor.dims)
    stored = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
    per_value = 2 if tensor.data_type in _TWO_PER_VALUE else 1
    if stored != count * per_value:
        raise ModelError(f"tensor {tensor.name!r}: dims {list(tensor.dims)} declare {count} values, "
                         f"it stores {stored // per_value}")


def load_external(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Read into `model` (from `load_model_lazy(path)`) the external data it refers to."""
    _load_external_data(model, Path(path).parent.resolve())


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))


def _load_external_data(model: onnx.ModelProto, base: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(model)
               if external_data_helper.uses_external_data(t)]
    if tensors:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read external data: {first_line(exc)}") from None


def check_output_path(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Refuse an output path that would overwrite the input or cannot be written
    (`outputs.check_outputs` with the input model and its external data)."""
    check_outputs(model_inputs(src), [("output", dst)])
    return Path(dst)


def model_inputs(path: str | os.PathLike, model: onnx.ModelProto | None = None,
                 label: str = "the input file") -> list[tuple[str, Path]]:
    """(label, path) of a model file and of every external data file it reads, for `check_outputs`.

    `model`: the model already loaded (without its data); else it is read here, and a file
    that cannot be read counts alone (its loader gives the error)."""
    path = Path(path)
    files = [(label, path)]
    if model is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = onnx.load_model(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - unreadable: load_model explains why, later
            return files
    sparse = [t for s in _sparse_tensors(model.graph) for t in (s.values, s.indices)]
    seen = set()
    for tensor in [*external_data_helper._get_all_tensors(model), *sparse]:
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location and location not in seen:
            seen.add(location)
            files.append((f"{'the input' if label == 'the input file' else label}'s external data file",
                          path.parent / location))
    return files


def check_model_valid(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse a model onnx.checker rejects with full_check (duplicate names, a tensor with two
    value fields, declared value_info shapes that shape inference contradicts, ...).

    `model` is checked as loaded (by `load_model_lazy`: the external data stays on disk,
    resolved from the model's folder); one over protobuf's 2 GB (its data loaded) is checked
    from `path` instead, which leaves its external data on disk. Strict shape inference does
    not type sparse tensors: a model holding any gets the checker without it."""
    full = not any(True for _ in _sparse_tensors(model.graph))
    try:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            onnx.checker.check_model(str(path), full_check=full)
        else:
            with contextlib.chdir(Path(path).parent.resolve()):  # the checker resolves data from the cwd
                onnx.checker.check_model(model, full_check=full)
    except Exception as exc:  # noqa: BLE001 - whatever the checker raises, the model is not valid ONNX
        raise ModelError(f"{path}: onnx.checker rejects it ({first_line(exc)})") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write `model` to `path` atomically and return the bytes written.

    Models over protobuf's 2 GB limit get their tensors in `<name>.data` beside it.
    """
    path = Path(path)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        return _save_external(model, path)
    write_atomic(path, model.SerializeToString(deterministic=True))
    return path.stat().st_size


def remove_model(path: str | os.PathLike) -> None:
    """Delete a model written by `save_model`, its `<name>.data` file included."""
    path = Path(path)
    try:
        external = uses_external_data(onnx.load_model(str(path), load_external_data=False))
    except (OSError, DecodeError, ValueError):
        external = False
    path.unlink(missing_ok=True)
    if external:
        (path.parent / (path.name + ".data")).unlink(missing_ok=True)


def _save_external(model: onnx.ModelProto, path: Path) -> int:
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=temp_prefix()) as tmp:
        tmp_model = Path(tmp) / path.name
        onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name)
        os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)
    return path.stat().st_size + (path.parent / data_name).stat().st_size


class ExternalWriter:
    """Write a model with its tensors in `<name>.data`, one tensor at a time, atomically.

    Both files are written in a temporary folder inside the target folder;
    `commit` moves the data file, then the model, into place. Leaving the
    `with` block on an exception removes the folder, so a failure leaves
    nothing behind. Tensors get relative locations, valid in the temporary
    folder (for the checks) and after the move.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.location = self.path.name + ".data"
        self.folder = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=temp_prefix()))
        self.model_path = self.folder / self.path.name
        self._data = open(self.folder / self.location, "wb")
        self.written: set[str] = set()  # names of the tensors already in the data file

    def __enter__(self) -> "ExternalWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        self._data.close()
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)

    def tensor(self, name: str, dims, data_type: int, data) -> onnx.TensorProto:
        """A TensorProto whose bytes `data` (bytes or an array) are appended to the data file."""
        offset, length = self._append(memoryview(data).cast("B"))
        tensor = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
        self._point(tensor, offset, length)
        self.written.add(name)
        return tensor

    def finish(self, model: onnx.ModelProto, source_base: Path) -> Path:
        """Copy into the data file the external tensors `model` still reads from its source
        folder (and, if the model is over 2 GB, its large inline tensors); write the model."""
        for tensor in external_data_helper._get_all_tensors(model):
            if external_data_helper.uses_external_data(tensor):
                if tensor.name not in self.written:
                    self._copy(tensor, *external_span(tensor, source_base))
        if model.ByteSize() > _PROTOBUF_LIMIT:
            for tensor in external_data_helper._get_all_tensors(model):
                if tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                    offset, length = self._append(memoryview(tensor.raw_data))
                    tensor.ClearField("raw_data")
                    self._point(tensor, offset, length)
        self._data.close()
        self.model_path.write_bytes(model.SerializeToString(deterministic=True))
        return self.model_path

    def commit(self) -> int:
        """Move the data file and the model into place; return their bytes."""
        for name in (self.location, self.path.name):
            os.chmod(self.folder / name, 0o666 & ~umask())
            os.replace(self.folder / name, self.path.parent / name)
        self.folder.rmdir()
        return self.path.stat().st_size + (self.path.parent / self.location).stat().st_size

    def _append(self, data: memoryview) -> tuple[int, int]:
        offset = self._data.tell()
        if data.nbytes >= _ALIGN and offset % _ALIGN:
            self._data.write(bytes(_ALIGN - offset % _ALIGN))
            offset = self._data.tell()
        self._data.write(data)
        return offset, data.nbytes

    def _copy(self, tensor: onnx.TensorProto, source: Path, offset: int, length: int) -> None:
        start = self._data.tell()
        if length >= _ALIGN and start % _ALIGN:
            self._data.write(bytes(_ALIGN - start % _ALIGN))
            start = self._data.tell()
        with open(source, "rb") as f:
            f.seek(offset)
            left = length
            while left:
                chunk = f.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise ModelError(f"tensor {tensor.name!r}: external data ends early")
                self._data.write(chunk)
                left -= len(chunk)
        self._point(tensor, start, length)

    def _point(self, tensor: onnx.TensorProto, offset: int, length: int) -> None:
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", offset), ("length", length)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        tensor.data_location = onnx.TensorProto.EXTERNAL


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model's files on disk: the .onnx, then its external data files (sorted)."""
    path = Path(path)
    model = onnx.load_model(str(path), load_external_data=False)
    locations = {external_data_helper.ExternalDataInfo(t).location
                 for t in external_data_helper._get_all_tensors(model)
                 if external_data_helper.uses_external_data(t)}
    return [path] + [path.parent / loc for loc in sorted(locations)]


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk, its external data files included."""
    return sum(f.stat().st_size for f in model_files(path))


XZ_MAX_BYTES = 32 << 20  # xz runs at a few MB/s: larger outputs are measured only on request


def xz_bytes(path: str | os.PathLike) -> int:
    """Bytes of the model's files (external data included) compressed with xz -0, as one
    stream: about what a download of them costs. Read in chunks, so memory stays flat."""
    compressor, total = lzma.LZMACompressor(preset=0), 0
    for file in model_files(path):
        with open(file, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def proto_graphs(graph: onnx.GraphProto):
    """`graph` and every subgraph in it (If/Loop/Scan bodies), outermost first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from proto_graphs(sub)


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
