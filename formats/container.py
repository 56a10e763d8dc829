"""The .odp container: a checked header, then payload chunks in token-position order.

Layout (little-endian; full spec in docs/format.md):

    magic   8 bytes  b"\\x89ODP\\r\\n\\x1a\\n"
    u32     header length H
    H bytes header fields, ending with the byte length of every chunk
    u32     CRC32 of the header fields
    chunks  each: its bytes, then u32 CRC32 of those bytes

Chunk i holds token positions [i*G, min((i+1)*G, kept)) of every tile, so keeping
fewer tokens is cutting chunks off the end. Chunk lengths live in the checked header,
so payload framing cannot be corrupted unnoticed: a file shorter than the lengths say
was cut short and is read as its complete chunks (`Container.complete` is then False).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\x89ODP\r\n\x1a\n"
VERSION = 1
MIME_TYPE = "image/x-odp"

MAX_SIDE = 65535            # pixels per side the format can describe
MAX_HEADER = 16 << 20       # header bytes (dominated by ICC/EXIF)
MAX_METADATA = 8 << 20      # bytes per ICC profile or EXIF block
MAX_TOKENS = 4096           # tokens per tile
MAX_CHUNK = 256 << 20       # bytes per payload chunk
DEFAULT_MAX_PIXELS = 1 << 28  # decompression-bomb guard: 268 MP (16384 x 16384)
MAX_PIXELS_ENV = "ODP_MAX_PIXELS"  # overrides DEFAULT_MAX_PIXELS for every reader in the process
FROM_ENV = -1               # max_pixels default: $ODP_MAX_PIXELS if set, else DEFAULT_MAX_PIXELS

_FIXED = struct.Struct("<BBIIHHHH32s")  # version, flags, width, height, tile, tokens, kept, chunk_tokens, hash


class FormatError(ValueError):
    """The bytes are not a valid .odp file (one-line, user-facing message)."""


def pixel_limit(max_pixels: int | None = FROM_ENV) -> int | None:
    """Resolve a max_pixels argument: FROM_ENV reads $ODP_MAX_PIXELS (a positive integer), None is no limit.

    An environment variable lets a service lower the bomb guard for every entry point at once.
    """
    if max_pixels != FROM_ENV:
        return max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels")
    return int(raw)


@dataclass
class Header:
    width: int
    height: int
    tile: int
    tokens: int               # K: tokens per tile the model produces
    kept: int                 # tokens per tile stored in this file
    chunk_tokens: int         # G: token positions per payload chunk
    model_name: str
    weights_hash: bytes       # sha256 of the weights file
    entropy_model: str
    icc: bytes = b""
    exif: bytes = b""

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def tiles(self) -> int:
        return self.cols * self.rows

    @property
    def chunk_count(self) -> int:
        return -(-self.kept // self.chunk_tokens)

    def validate(self, max_pixels: int | None = FROM_ENV) -> None:
        max_pixels = pixel_limit(max_pixels)
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise FormatError(f"image size {self.width}x{self.height} is outside 1..{MAX_SIDE} pixels per side")
        if max_pixels is not None and self.width * self.height > max_pixels:
            raise FormatError(f"image of {self.width}x{self.height} pixels exceeds the limit of {max_pixels} pixels")
        if not (16 <= self.tile <= 4096):
            raise FormatError(f"tile size {self.tile} is outside 16..4096")
        if not (1 <= self.tokens <= MAX_TOKENS):
            raise FormatError(f"tokens per tile {self.tokens} is outside 1..{MAX_TOKENS}")
        if not (1 <= self.kept <= self.tokens):
            raise FormatError(f"kept tokens {self.kept} is outside 1..{self.tokens}")
        if not (1 <= self.chunk_tokens <= self.tokens):
            raise FormatError(f"chunk size {self.chunk_tokens} is outside 1..{self.tokens}")
        if len(self.weights_hash) != 32:
            raise FormatError("weights hash must be 32 bytes")
        for name, blob in (("ICC profile", self.icc), ("EXIF block", self.exif)):
            if len(blob) > MAX_METADATA:
                raise FormatError(f"{name} of {len(blob)} bytes exceeds {MAX_METADATA} bytes")


@dataclass
class Container:
    header: Header
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True     # False when the file ended inside the payload

    @property
    def kept(self) -> int:
        """Tokens per tile that the complete chunks hold."""
        return min(self.header.kept, len(self.chunks) * self.header.chunk_tokens)


def _pack_str(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise FormatError("name longer than 255 bytes")
    return struct.pack("<B", len(b)) + b


def _pack_blob(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def pack_header(h: Header, chunk_lengths: list[int]) -> bytes:
    h.validate(max_pixels=None)
    if len(chunk_lengths) != h.chunk_count:
        raise FormatError(f"{len(chunk_lengths)} chunks given, header needs {h.chunk_count}")
    for i, n in enumerate(chunk_lengths):
        _check_chunk_length(i, n)
    fixed = _FIXED.pack(VERSION, 0, h.width, h.height, h.tile, h.tokens, h.kept, h.chunk_tokens, h.weights_hash)
    return (fixed + _pack_str(h.model_name) + _pack_str(h.entropy_model) + _pack_blob(h.icc) + _pack_blob(h.exif)
            + struct.pack(f"<{len(chunk_lengths)}I", *chunk_lengths))


def write(c: Container) -> bytes:
    """Serialise a container; the chunk count must match the header's kept tokens."""
    head = pack_header(c.header, [len(chunk) for chunk in c.chunks])
    out = [MAGIC, struct.pack("<I", len(head)), head, struct.pack("<I", zlib.crc32(head))]
    for chunk in c.chunks:
        out += [chunk, struct.pack("<I", zlib.crc32(chunk))]
    return b"".join(out)


class _Reader:
    """Bounds-checked cursor over untrusted bytes."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"{self.what} is cut short")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        try:
            return self.take(self.u8()).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.what} holds a name that is not UTF-8") from None

    def blob(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise FormatError(f"{self.what} declares a block of {n} bytes, over the limit of {limit}")
        return self.take(n)


def is_odp(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


def read_header(data: bytes, max_pixels: int | None = FROM_ENV) -> tuple[Header, list[int], int]:
    """Parse and check the header -> (header, chunk lengths, offset of the first chunk)."""
    if not is_odp(data):
        raise FormatError("not an ODP file (wrong magic bytes)")
    r = _Reader(data, "file header")
    r.take(len(MAGIC))
    n = r.u32()
    if n > MAX_HEADER:
        raise FormatError(f"header declares {n} bytes, over the limit of {MAX_HEADER}")
    head = r.take(n)
    if r.u32() != zlib.crc32(head):
        raise FormatError("header checksum mismatch: the file is corrupt")
    h, lengths = _parse_header_fields(head, max_pixels)
    return h, lengths, r.pos


def _parse_header_fields(head: bytes, max_pixels: int | None) -> tuple[Header, list[int]]:
    r = _Reader(head, "header")
    version, _flags, w, hgt, tile, tokens, kept, chunk_tokens, whash = r.unpack(_FIXED)
    if version != VERSION:
        raise FormatError(f"ODP format version {version} is not supported (this reader knows version {VERSION})")
    model_name, entropy_model = r.string(), r.string()
    icc, exif = r.blob(MAX_METADATA), r.blob(MAX_METADATA)
    h = Header(w, hgt, tile, tokens, kept, chunk_tokens, model_name, whash, entropy_model, icc, exif)
    h.validate(max_pixels)
    lengths = list(struct.unpack(f"<{h.chunk_count}I", r.take(4 * h.chunk_count)))
    if r.pos != len(head):
        raise FormatError("header has trailing bytes")
    for i, n in enumerate(lengths):
        _check_chunk_length(i, n)
    return h, lengths


def _check_chunk_length(i: int, n: int) -> None:
    if n > MAX_CHUNK:
        raise FormatError(f"chunk {i} declares {n} bytes, over the limit of {MAX_CHUNK}")
    if n == 0 or n % 4:
        raise FormatError(f"chunk {i} declares {n} bytes, not a positive whole number of 32-bit words")


def read(data: bytes, max_pixels: int | None = FROM_ENV) -> Container:
    """Parse a whole file. Corrupt chunks raise; a cut-short payload is kept as far as it goes."""
    h, lengths, pos = read_header(data, max_pixels)
    r = _Reader(data, "payload")
    r.pos = pos
    chunks: list[bytes] = []
    for i, n in enumerate(lengths):
        if len(data) - r.pos < n + 4:
            return Container(h, chunks, complete=False)
        chunk = r.take(n)
        if r.u32() != zlib.crc32(chunk):
            raise FormatError(f"payload chunk {i} checksum mismatch: the file is corrupt")
        chunks.append(chunk)
    if r.pos != len(data):
        raise FormatError(f"{len(data) - r.pos} unexpected bytes after the last chunk")
    return Container(h, chunks)
