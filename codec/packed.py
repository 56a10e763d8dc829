"""Weights files shipped packed, for the standalone binary, which must stay small.

A packed file (`<name>.safetensors.packed`) is the safetensors file with its tensor bytes split into byte
planes (the high bytes of fp16 weights are much alike) and compressed with LZMA: about 68% of the size. A model
fine-tuned from another (the same tensors, a little moved) is packed against it: its tensor bytes minus the
reference's, word by word, before the planes (odp-thumbnail-x2-v1 against odp-classic-x2-v2: 13.9 -> 5.6 MB).
The binary unpacks its packed files once, byte for byte, into the user's cache (`$XDG_CACHE_HOME/odp`, or
`~/.cache/odp`; a temporary folder where neither can be written) and points the registry there, so every
model still loads from a plain safetensors file whose pinned sha256 is checked as usual.

    MAGIC (6) | sha256 of the file (32) | file length (u64) | tensor bytes' offset (u64) | xz(planes)
    DELTA_MAGIC (6) | the same three | sha256 of the reference file (32) | xz(planes of the difference)
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import lzma
import tempfile
from pathlib import Path

import numpy as np

from . import registry
from .errors import ModelNotFound

MAGIC = b"ODPW1\n"
DELTA_MAGIC = b"ODPW2\n"  # packed against a reference file
SUFFIX = ".packed"
_HEAD = struct.Struct("<32sQQ")
_REF = struct.Struct("<32s")
HEAD_SIZE = len(MAGIC) + _HEAD.size + _REF.size  # enough of a packed file's start to read what it announces
MAX_UNPACKED = 1 << 30  # no shipped weights file comes near it


def _split(body: bytes) -> bytes:
    """Byte planes of 2-byte words: every first byte, then every second (an odd last byte at the end)."""
    even = len(body) // 2 * 2
    return np.frombuffer(body, np.uint8, even).reshape(-1, 2).T.tobytes() + body[even:]


def _join(planes: bytes) -> bytes:
    even = len(planes) // 2 * 2
    return np.frombuffer(planes, np.uint8, even).reshape(2, -1).T.tobytes() + planes[even:]


def _tensor_start(data: bytes) -> int:
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, JSON header, tensor bytes
    if len(data) < 8 or start > len(data):
        raise ValueError("not a safetensors file")
    return start


def _words(body: bytes) -> np.ndarray:
    return np.frombuffer(body, np.uint16, len(body) // 2)


def _minus(body: bytes, ref: bytes, sign: int) -> bytes:
    """body - ref (sign -1) or body + ref (sign 1) in 16-bit words, modulo 2**16 (an odd last byte kept)."""
    a, b = _words(body), _words(ref)
    return (a - b if sign < 0 else a + b).tobytes() + body[len(body) // 2 * 2:]


def pack(data: bytes, reference: bytes | None = None) -> bytes:
    """A safetensors file's bytes -> its packed form; with `reference` (a file of the same tensor bytes'
    length: a model it was fine-tuned from), packed as its difference from it."""
    start = _tensor_start(data)
    head = _HEAD.pack(hashlib.sha256(data).digest(), len(data), start)
    body = data[start:]
    if reference is None:
        return MAGIC + head + lzma.compress(data[:start] + _split(body), preset=9)
    ref = reference[_tensor_start(reference):]
    if len(ref) != len(body):
        raise ValueError("the reference's tensor bytes differ in length")
    return DELTA_MAGIC + head + _REF.pack(hashlib.sha256(reference).digest()) + lzma.compress(
        data[:start] + _split(_minus(body, ref, -1)), preset=9)


def unpacked_size(packed_head: bytes) -> int | None:
    """The length of the file a packed file's first bytes announce (None if they are not a packed file's)."""
    if not packed_head.startswith((MAGIC, DELTA_MAGIC)) or len(packed_head) < len(MAGIC) + _HEAD.size:
        return None
    return _HEAD.unpack_from(packed_head, len(MAGIC))[1]


def reference_of(packed_head: bytes) -> bytes | None:
    """The sha256 of the file a packed file is the difference from (None: packed alone, or not packed)."""
    if not packed_head.startswith(DELTA_MAGIC) or len(packed_head) < HEAD_SIZE:
        return None
    return _REF.unpack_from(packed_head, len(MAGIC) + _HEAD.size)[0]


def unpack(packed: bytes, name: str = "weights", reference: bytes | None = None) -> bytes:
    """A packed file -> the safetensors file's exact bytes (ModelNotFound, one line, if it is damaged or
    its reference file is missing or not the one it was packed against)."""
    damaged = ModelNotFound(f"packed weights file {name} is damaged: reinstall ODP")
    size = unpacked_size(packed)
    if size is None or size > MAX_UNPACKED:
        raise damaged
    digest, _, start = _HEAD.unpack_from(packed, len(MAGIC))
    ref = reference_of(packed)
    if packed.startswith(DELTA_MAGIC) and (ref is None or reference is None
                                           or hashlib.sha256(reference).digest() != ref):
        raise ModelNotFound(f"packed weights file {name} needs the weights it was packed against: reinstall ODP")
    z = lzma.LZMADecompressor()
    try:
        raw = z.decompress(packed[HEAD_SIZE if ref else len(MAGIC) + _HEAD.size:], size + 1)
    except lzma.LZMAError:
        raise damaged from None
    if len(raw) != size or not z.eof or start > size:
        raise damaged
    body = _join(raw[start:])
    if ref is not None:
        ref_body = reference[_tensor_start(reference):]
        if len(ref_body) != len(body):
            raise damaged
        body = _minus(body, ref_body, 1)
    data = raw[:start] + body
    if hashlib.sha256(data).digest() != digest:
        raise damaged
    return data


def unpack_folder(src: Path, dst: Path) -> None:
    """Make dst hold src's files, each packed one unpacked (a file already there at its size is kept); files
    packed against another are unpacked after the rest, from their reference among them.
    Each file is written under a temporary name and renamed, so a concurrent run never reads half of one."""
    dst.mkdir(parents=True, exist_ok=True)
    files = [p for p in sorted(src.iterdir()) if p.is_file()] if src.is_dir() else []
    heads = {}
    for path in files:
        with path.open("rb") as f:
            heads[path] = f.read(HEAD_SIZE) if path.name.endswith(SUFFIX) else None
    refs = {path: reference_of(head or b"") for path, head in heads.items()}
    by_hash: dict[bytes, Path] | None = None
    for path in sorted(files, key=lambda p: refs[p] is not None):
        head, ref = heads[path], refs[path]
        target = dst / (path.name[:-len(SUFFIX)] if head is not None else path.name)
        size = path.stat().st_size if head is None else unpacked_size(head)
        if target.is_file() and target.stat().st_size == size:
            continue
        reference = None
        if ref is not None:
            if by_hash is None:
                by_hash = {registry.file_sha256(p): p for p in dst.glob("*.safetensors")}
            reference = by_hash[ref].read_bytes() if ref in by_hash else None
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if head is not None:
                tmp.write_bytes(unpack(path.read_bytes(), path.name, reference))
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
            key.update(p.name.encode() + f.read(HEAD_SIZE))
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
