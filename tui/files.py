"""What `odp tui` needs before torch is loaded: finding files and naming errors."""
from __future__ import annotations

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
