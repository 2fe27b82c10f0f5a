"""File I/O: atomic writes (nothing half-written under the final name), readers whose errors name the file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import h5py


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file (or directory) is removed and ``path`` is untouched.
    Works for files and for directories (a directory replaces an existing one).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp]:
            _fsync(item)  # the data on disk before the name: else a power loss can leave a truncated file under it
        if tmp.is_dir() and final.exists():
            # A rename cannot replace a non-empty directory: move the old one aside first.
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        try:
            _fsync(final.parent)  # the rename itself
        except OSError as error:  # some network / FUSE file systems cannot flush a directory
            if error.errno != errno.EINVAL:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush one file, or one directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing JSON file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def open_hdf5(path: str | os.PathLike, what: str) -> h5py.File:
    """Open ``path`` read-only; a missing or unreadable file raises naming it (``what``: what it should hold)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file (truncated?): {error}") from error


def json_round_trip(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists): compares equal to what a JSON file stores."""
    return json.loads(json.dumps(value))
