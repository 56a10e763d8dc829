"""Reading inputs and writing outputs safely: inputs bounded in size; outputs never half-written,
never over an existing file unasked.

Every writer (the `odp` command, the library's file helpers, `odp tui`) goes through
here: the bytes go to a temporary file beside the target, are flushed to disk, and
only then take the target's name, so a crash, Ctrl-C or a full disk leaves no partial file.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


MAX_INPUT_BYTES = 2 << 30  # an input read whole: endless streams such as /dev/zero are refused


def read_bounded(f: BinaryIO) -> bytes:
    """A binary stream's bytes, at most MAX_INPUT_BYTES (ValueError past that)."""
    data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"input is larger than {MAX_INPUT_BYTES >> 30} GiB")
    return data


@contextmanager
def _temp_beside(target: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A temp file in target's folder (so the rename stays on one file system), removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        Path(tmp).unlink(missing_ok=True)  # after a successful rename or link this is a no-op or the spare name


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], overwrite: bool = False) -> Path:
    """write(f) into a temp file, then rename it to path. FileExistsError if path exists and not overwrite."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists")
    with _temp_beside(target) as (f, tmp):
        write(f)
        _flush(f)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    return target


def _link_new(tmp: str, target: Path) -> None:
    """Give tmp the name target only if target does not exist: a hard link fails if another
    writer got there first. File systems without hard links get a check, then a rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        if target.exists():
            raise FileExistsError(f"{target}: already exists") from None
        os.replace(tmp, target)


def write_new(path: Path, data: bytes) -> Path:
    """Write data under the first free name among path, path-2, path-3, ...; returns the name used."""
    with _temp_beside(path) as (f, tmp):
        f.write(data)
        _flush(f)
        n = 1
        while True:
            target = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                _link_new(tmp, target)
                return target
            except FileExistsError:
                n += 1
