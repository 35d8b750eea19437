"""Atomic output: write beside the target, fsync, rename. A reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InputError


def check_output_path(path: Path, *, inputs: tuple[Path, ...] = ()) -> Path:
    """Fail early (exit 3) when path cannot be written: missing folder, a folder, or one of the inputs."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{path}: output folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputError(f"{path}: {parent} is not a folder")
    if path.is_dir():
        raise InputError(f"{path}: output path is a folder; give a file name")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: output folder {parent} is not writable")
    for inp in inputs:
        with contextlib.suppress(OSError):
            if path.exists() and Path(inp).exists() and path.samefile(inp) or path.resolve() == Path(inp).resolve():
                raise InputError(f"{path}: output path is the input file; choose another -o")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in path's folder; on success fsync it and rename it onto path.

    On any exception (KeyboardInterrupt included) the temporary file is removed and an existing
    file at path is left untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    except OSError as e:
        raise InputError(f"{path}: cannot write in {path.parent} ({e.strerror}); choose another output folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, path)
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Call writer(tmp) to produce the file, then move it into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
