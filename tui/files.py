"""What `odp tui` needs before torch is loaded: finding files, naming errors, saving safely."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".avif", ".gif", ".odp"}


def find_images(folder: Path) -> list[Path]:
    """Images and .odp files under folder (recursively), or the file itself, in a stable order."""
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and not p.is_dir())


def printable(text: str) -> str:
    """Text from an untrusted file, with control characters (terminal escapes) replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def describe(e: BaseException) -> str:
    """One line a person can act on, for whatever opening or coding a file raised."""
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(e).splitlines()[0] if str(e) else ""
    return text or type(e).__name__


def write_new(path: Path, data: bytes) -> Path:
    """Write atomically and never over an existing file: a temp file beside the target, then a
    hard link to the first free name (name, name-2, name-3, ...); returns the name used."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        n = 1
        while True:
            target = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(tmp, target)  # fails if target exists: no race with another writer
                return target
            except FileExistsError:
                n += 1
    finally:
        Path(tmp).unlink(missing_ok=True)


