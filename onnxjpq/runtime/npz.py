"""Reading .npz archives of named arrays without trusting them.

Whatever the file holds, `read_npz` either returns plain numeric arrays or
raises a one-line `DataError` that says what the file is not:

- only a regular file is opened (a FIFO, a device or a folder is refused
  before anything could block on it), and the open itself never blocks;
- the first bytes tell an .npz (a zip archive) from text, a pickle, a single
  .npy array, an ONNX model or other bytes, and the error names which;
- each member's .npy header is read first, and the size it declares
  (shape × item size) is checked against the bytes the archive holds for it
  (the uncompressed size in the zip directory, itself bounded by deflate's
  largest ratio over the compressed size) and against the machine's memory,
  before any array is allocated;
- object arrays (pickled Python objects) are never loaded.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
import zlib
from typing import BinaryIO, Callable, Iterable

import numpy as np

from ..errors import DataError, first_line

DEFLATE_MAX_RATIO = 1032  # deflate cannot expand its input by more than about 1032:1
_READ_CHUNK = 16 << 20
_DAMAGED = (OSError, EOFError, KeyError, RuntimeError, NotImplementedError, UnicodeDecodeError, ValueError,
            SyntaxError, struct.error, zipfile.BadZipFile, zlib.error)  # what zipfile and numpy raise


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for reading; refuse anything else without blocking on it."""
    try:
        kind = _kind(os.stat(path).st_mode)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never waits on a FIFO
            kind = _kind(os.fstat(fd).st_mode)  # the file may have been swapped since stat
            if kind is None:
                return os.fdopen(fd, "rb")
            os.close(fd)
    except FileNotFoundError:
        raise DataError(f"{path}: not a readable .npz file (no such file)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or first_line(exc)})") from None
    raise DataError(f"{path}: {kind}, not a regular file; give an .npz file")


def _what_it_is(head: bytes, f: BinaryIO, size: int) -> str:
    """A file that is not a zip archive, in words, from its first bytes."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array (save named arrays with numpy.savez)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, which is never loaded"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if _is_onnx(f, size):
        return "an ONNX model (give the data file)"
    try:
        text = head.decode("utf-8")
        if "\x00" not in text:
            return "a text file"
    except UnicodeDecodeError:
        pass
    return "unrecognised bytes (no zip header)"


def _is_onnx(f: BinaryIO, size: int) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    if size > 64 << 20:
        return False
    f.seek(0)
    try:
        model = onnx.ModelProto.FromString(f.read())
    except (DecodeError, ValueError, RuntimeError):
        return False
    return model.ir_version > 0 and model.HasField("graph")


def _member_header(f, member: str, path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from an .npy member's header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    impl = getattr(np.lib, "_format_impl", np.lib.format)  # numpy 2 keeps the general reader private
    if version == (3, 0) and hasattr(impl, "_read_array_header"):  # 2.0 with a UTF-8 header
        return impl._read_array_header(f, version)
    raise DataError(f"{path}: array {member!r} has .npy format version {version[0]}.{version[1]}, "
                    "which is not read; save it with numpy.savez")


def _declared_bytes(info: zipfile.ZipInfo, name: str, shape, dtype: np.dtype, header: int, path) -> int:
    """The bytes the header declares, checked against what the archive holds for the member."""
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise DataError(f"{path}: array {name!r} declares an invalid shape {list(shape)}")
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - header
    if info.compress_type == zipfile.ZIP_DEFLATED:
        held = min(held, info.compress_size * DEFLATE_MAX_RATIO)
    elif info.compress_type == zipfile.ZIP_STORED:
        held = min(held, info.compress_size - header)
    if declared > held:
        raise DataError(f"{path}: array {name!r} declares shape {list(shape)} of {dtype} "
                        f"({_size(declared)}) but the archive holds {_size(max(held, 0))} for it; "
                        "the file is damaged or forged")
    return declared


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_member(archive: zipfile.ZipFile, member: str, path) -> np.ndarray:
    name, info = member[:-4], archive.getinfo(member)
    with archive.open(info) as f:
        shape, fortran, dtype = _member_header(f, name, path)
        if dtype.hasobject:
            raise DataError(f"{path}: array {name!r} holds pickled Python objects, which are never loaded; "
                            "save plain numeric arrays")
        declared = _declared_bytes(info, name, shape, dtype, f.tell(), path)
        memory = _memory_bytes()
        if memory is not None and declared > memory:
            raise DataError(f"{path}: array {name!r} needs {_size(declared)}, more than this machine's "
                            f"memory ({_size(memory)})")
        array = np.empty(math.prod(shape), dtype)
        if declared:
            view, done = array.view(np.uint8).reshape(-1), 0
            while done < declared:
                got = f.readinto(view[done:done + _READ_CHUNK])
                if not got:
                    raise DataError(f"{path}: array {name!r} is truncated ({done} of {declared} bytes)")
                done += got
        while f.read(_READ_CHUNK):  # to the end of the member, so that zipfile checks its CRC
            pass
    array = array.reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def read_npz(path: str | os.PathLike,
             wanted: Callable[[list[str]], Iterable[str]] | Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the .npz at `path` named in `wanted` (all if None), which may be a function
    of the names the archive holds (raising DataError to refuse it before any array is read)."""
    with open_regular(path) as f:
        head, size = f.read(8), os.fstat(f.fileno()).st_size
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise DataError(f"{path}: not an .npz archive: {_what_it_is(_head(f), f, size)}")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                members = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
                chosen = list(members) if wanted is None else wanted(list(members)) if callable(wanted) else wanted
                return {n: _read_member(archive, members[n], path) for n in chosen if n in members}
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{path}: the arrays do not fit in memory") from None
        except _DAMAGED as exc:
            raise DataError(f"{path}: not a readable .npz archive ({first_line(exc)})") from None


def _head(f: BinaryIO) -> bytes:
    f.seek(0)
    return f.read(4096)
