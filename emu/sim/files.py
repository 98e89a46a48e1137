"""Files a run leaves behind: written whole or not at all, checked before any work starts.

A finding is worth more than the hours of hunting that found it, so nothing is written in
place: ``write_atomic`` writes a temporary file beside the target, fsyncs it, renames it
over the target and fsyncs the directory, so a kill at any moment leaves either the old
file or the new one. ``check_dir`` and ``check_file`` find an unwritable ``--out`` or
``--trace`` before the first schedule runs, not after the finding.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from ..errors import EmuError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it."""
    if str(path) == "":
        raise EmuError(f"{what} needs a directory path")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise EmuError(f"cannot write to {what} {str(path)!r}: {_reason(exc)}") from None
    return path


def check_file(path: str | Path, what: str) -> Path:
    """Prove that ``path`` can be written (its directory is created if needed)."""
    if str(path) == "":
        raise EmuError(f"{what} needs a file path")
    path = Path(path)
    if path.is_dir():
        raise EmuError(f"cannot write {what} {str(path)!r}: it is a directory")
    check_dir(path.parent, f"{what}'s directory")
    return path


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole: temporary file, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append one line and make it durable (a JSON-lines index that a kill cannot tear
    beyond its last line)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is one clear
    EmuError (a device such as /dev/zero would be read forever, a FIFO blocks on open)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise EmuError(f"{what} {str(path)!r} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise EmuError(f"no {what} {str(path)!r}") from None
    except OSError as exc:
        raise EmuError(f"cannot read {what} {str(path)!r}: {_reason(exc)}") from None
    if len(data) > limit:
        raise EmuError(f"{what} {str(path)!r} is larger than {limit // 2**20} MiB")
    return data
