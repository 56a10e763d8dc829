"""Weights files shipped packed, for the standalone binary, which must stay small.

A packed file (`<name>.safetensors.packed`) is the safetensors file with its tensor bytes split into byte
planes (the high bytes of fp16 weights are much alike) and compressed with LZMA: about 68% of the size. The binary
unpacks its packed files once, byte for byte, into the user's cache (`$XDG_CACHE_HOME/odp`, or
`~/.cache/odp`; a temporary folder where neither can be written) and points the registry there, so every
model still loads from a plain safetensors file whose pinned sha256 is checked as usual.

    MAGIC (6) | sha256 of the file (32) | file length (u64) | tensor bytes' offset (u64) | xz(planes)
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import tempfile
import lzma
from pathlib import Path

import numpy as np

from . import registry
from .errors import ModelNotFound

MAGIC = b"ODPW1\n"
SUFFIX = ".packed"
_HEAD = struct.Struct("<32sQQ")
MAX_UNPACKED = 1 << 30  # no shipped weights file comes near it


def _split(body: bytes) -> bytes:
    """Byte planes of 2-byte words: every first byte, then every second (an odd last byte at the end)."""
    even = len(body) // 2 * 2
    return np.frombuffer(body, np.uint8, even).reshape(-1, 2).T.tobytes() + body[even:]


def _join(planes: bytes) -> bytes:
    even = len(planes) // 2 * 2
    return np.frombuffer(planes, np.uint8, even).reshape(2, -1).T.tobytes() + planes[even:]


def pack(data: bytes) -> bytes:
    """A safetensors file's bytes -> its packed form."""
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, JSON header, tensor bytes
    if len(data) < 8 or start > len(data):
        raise ValueError("not a safetensors file")
    return MAGIC + _HEAD.pack(hashlib.sha256(data).digest(), len(data), start) + lzma.compress(
        data[:start] + _split(data[start:]), preset=9)


def unpacked_size(packed_head: bytes) -> int | None:
    """The length of the file a packed file's first bytes announce (None if they are not a packed file's)."""
    if not packed_head.startswith(MAGIC) or len(packed_head) < len(MAGIC) + _HEAD.size:
        return None
    return _HEAD.unpack_from(packed_head, len(MAGIC))[1]


def unpack(packed: bytes, name: str = "weights") -> bytes:
    """A packed file -> the safetensors file's exact bytes (ModelNotFound, one line, if it is damaged)."""
    damaged = ModelNotFound(f"packed weights file {name} is damaged: reinstall ODP")
    size = unpacked_size(packed)
    if size is None or size > MAX_UNPACKED:
        raise damaged
    digest, _, start = _HEAD.unpack_from(packed, len(MAGIC))
    z = lzma.LZMADecompressor()
    try:
        raw = z.decompress(packed[len(MAGIC) + _HEAD.size:], size + 1)
    except lzma.LZMAError:
        raise damaged from None
    if len(raw) != size or not z.eof or start > size:
        raise damaged
    data = raw[:start] + _join(raw[start:])
    if hashlib.sha256(data).digest() != digest:
        raise damaged
    return data


def unpack_folder(src: Path, dst: Path) -> None:
    """Make dst hold src's files, each packed one unpacked (a file already there at its size is kept).
    Each file is written under a temporary name and renamed, so a concurrent run never reads half of one."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()) if src.is_dir() else []:
        if not path.is_file():
            continue
        packed = path.name.endswith(SUFFIX)
        target = dst / (path.name[:-len(SUFFIX)] if packed else path.name)
        if packed:
            with path.open("rb") as f:
                size = unpacked_size(f.read(len(MAGIC) + _HEAD.size))
        else:
            size = path.stat().st_size
        if target.is_file() and target.stat().st_size == size:
            continue
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if packed:
                tmp.write_bytes(unpack(path.read_bytes(), path.name))
            else:
                shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "odp"


def use_unpacked() -> None:
    """Where the installed weights folders hold packed files (the binary), unpack them into the cache and
    read every model from there. A no-op for the Python package, which ships plain files."""
    folders = (registry.WEIGHTS_DIR, registry.CONTEXT_DIR)
    packed = sorted(p for d in folders if d.is_dir() for p in d.glob(f"*{SUFFIX}"))
    if not packed:
        return
    key = hashlib.sha256()
    for p in packed:  # a binary with other weights unpacks into its own folder
        with p.open("rb") as f:
            key.update(p.name.encode() + f.read(len(MAGIC) + _HEAD.size))
    root = _cache_root() / f"weights-{key.hexdigest()[:16]}"
    try:
        _unpack_into(folders, root)
    except OSError:  # no writable cache: a temporary folder for this run
        root = Path(tempfile.mkdtemp(prefix="odp-weights-"))
        atexit.register(shutil.rmtree, root, True)
        _unpack_into(folders, root)
    registry.use_folders(root / "models", root / "contexts")


def _unpack_into(folders: tuple[Path, Path], root: Path) -> None:
    for src, name in zip(folders, ("models", "contexts")):
        unpack_folder(src, root / name)
