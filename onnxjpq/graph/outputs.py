"""Output paths, refused before any work when they would destroy an input or each other; atomic writing.

`check_outputs(inputs, outputs, folders)` compares every output a run will
write (the model, its `.data` file, a report, a JSON file, a figure, a
checkpoint) with every file the run reads (the model, its external data, data
files) and with the other outputs: the same path, the same file through a
symlink (resolved paths) or a hard link (`st_dev`/`st_ino`), is refused with
one line naming both. It also refuses outputs that cannot be written (a
folder, a trailing `/`, a device or pipe, a missing or read-only folder).

Temporary files get names `.onnxjpq-<host>-<pid>-…` in the output's folder
(`temp_prefix`); `remove_stale` deletes those of this host whose process is
gone (a run killed with SIGKILL), which `check_outputs` does for every output
folder, so the next run in that folder cleans up after a killed one.
`atomic_file` writes through such a temporary file, moved into place only
when the write completes and removed on any failure or interrupt.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from ..errors import OptionError

Labelled = Iterable[tuple[str, "str | os.PathLike | None"]]

_STALE = re.compile(r"^\.onnxjpq-([0-9a-f]{6})-(\d+)-")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_prefix() -> str:
    """The name prefix of this process's temporary files and folders."""
    return f".onnxjpq-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a number we cannot ask about): keep its files
    return True


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (`temp_prefix` names) that dead processes of this host left in `folder`."""
    removed, host = [], _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if not match or match.group(1) != host or int(match.group(2)) == os.getpid():
            continue
        if _alive(int(match.group(2))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _identity(path: str | os.PathLike) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        return real, None
    return real, (st.st_dev, st.st_ino)


def _how(a: str, b: str, ida, idb) -> str:
    if os.path.abspath(a) == os.path.abspath(b):
        return ""
    if ida[0] == idb[0]:
        return " (the same file through a symlink)" if (os.path.islink(a) or os.path.islink(b)) else \
            " (the same file)"
    return " (a hard link to it)"


def _check_writable_file(label: str, raw, created: list[str]) -> None:
    text = os.fspath(raw)
    if text.endswith(("/", os.sep)) or (os.altsep and text.endswith(os.altsep)):
        raise OptionError(f"{label} {text} ends with '/', which names a folder; give a file name")
    path = Path(text)
    if path.is_dir():
        raise OptionError(f"{label} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OptionError(f"{label} {path} exists and is not a regular file (a device or pipe); "
                          "choose a file path")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OptionError(f"{label} {path}: {parent} is a file, not a folder")
    if not parent.exists():
        real = os.path.realpath(parent)
        if not any(real == c or real.startswith(c + os.sep) for c in created):
            raise OptionError(f"output folder {parent} does not exist")
        return
    if not os.access(parent.resolve(), os.W_OK):
        raise OptionError(f"output folder {parent} is not writable")


def _check_writable_folder(label: str, raw) -> None:
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{label} {path} is a file; give a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise OptionError(f"{label} {path}: {existing} is a file, not a folder")
    if existing.exists() and not os.access(existing.resolve(), os.W_OK):
        raise OptionError(f"{label} {path}: {existing} is not writable")


def check_outputs(inputs: Labelled, outputs: Labelled, folders: Labelled = ()) -> None:
    """Refuse (OptionError, one line) outputs that are an input, another output, or unwritable.

    `inputs`: (label, path) of every file the run reads ("the input file", "the --data file");
    `outputs`: (label, path) of every file it writes ("output", "--report"); '-' (stdout) and
    None are skipped; `folders`: (label, path) of the folders it creates and writes into
    (files inside them may be listed in `outputs`). Then the stale temporaries of killed runs
    are removed from the output folders (`remove_stale`).
    """
    ins = [(label, os.fspath(p), _identity(p)) for label, p in inputs if p is not None]
    outs: list[tuple[str, str, tuple]] = []
    created = []
    for label, p in folders:
        if p is not None:
            _check_writable_folder(label, p)
            created.append(os.path.realpath(p))
            outs.append((label, os.fspath(p), _identity(p)))
    for label, p in outputs:
        if p is None or os.fspath(p) == "-":
            continue
        _check_writable_file(label, p, created)
        outs.append((label, os.fspath(p), _identity(p)))
    for i, (label, path, ident) in enumerate(outs):
        for in_label, in_path, in_ident in ins:
            if _same(ident, in_ident):
                how = _how(path, in_path, ident, in_ident)
                where = f" {in_path}{how}" if how else ""
                raise OptionError(f"{label} {path} is {in_label}{where}; choose another path")
        for other_label, other_path, other_ident in outs[:i]:
            if _same(ident, other_ident):
                raise OptionError(f"{label} {path} is also the {other_label}"
                                  f"{_how(path, other_path, ident, other_ident)}"
                                  "; give each output its own path")
    for folder in {os.path.dirname(os.path.realpath(path)) for _, path, _ in outs}:
        remove_stale(folder)


def _same(a, b) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


# ------------------------------------------------------------------ atomic writing


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def atomic_file(path: str | os.PathLike):
    """A binary file to write `path` through: a temporary file in its folder (named by
    `outputs.temp_prefix`), moved into place when the block ends, removed if it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(), suffix=f".{path.name[:80]}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (a report) atomically."""
    write_atomic(Path(path), text.encode())
