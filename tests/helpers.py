"""Small helpers shared by the test modules (imported as `helpers`; tests/ is on sys.path)."""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace

import numpy as np
from PIL import Image

from odp.formats import container
from odp.formats.container import MAGIC, Container, Header


def mse(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape
    return float(((x - y) ** 2).mean())


def psnr(a, b) -> float:
    e = mse(a, b)
    return float("inf") if e == 0 else 10 * np.log10(255.0 ** 2 / e)


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def encode_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def header_end(data: bytes) -> int:
    """Offset of the first payload chunk (end of magic + length + header + CRC)."""
    n = struct.unpack_from("<I", data, len(MAGIC))[0]
    return len(MAGIC) + 4 + n + 4


def chunk_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole chunk record (data .. CRC) in a valid file."""
    _, lengths, pos = container.read_header(data, max_pixels=None)
    spans = []
    for n in lengths:
        spans.append((pos, pos + n + 4))
        pos += n + 4
    return spans


def reheader(data: bytes, **changes) -> bytes:
    """The same file with header fields changed (checksums made valid again).

    Goes through struct packing directly so fields outside what validate() allows
    can be written too.
    """
    c = container.read(data, max_pixels=None)
    h = replace(c.header, **changes)
    fixed = container._FIXED.pack(container.VERSION, 0, h.width, h.height, h.tile, h.tokens, h.kept,
                                  h.chunk_tokens, h.weights_hash)
    head = (fixed + container._pack_str(h.model_name) + container._pack_str(h.entropy_model)
            + container._pack_blob(h.icc) + container._pack_blob(h.exif)
            + struct.pack(f"<{len(c.chunks)}I", *[len(ch) for ch in c.chunks]))
    out = [MAGIC, struct.pack("<I", len(head)), head, struct.pack("<I", zlib.crc32(head))]
    for ch in c.chunks:
        out += [ch, struct.pack("<I", zlib.crc32(ch))]
    return b"".join(out)


def with_chunks(data: bytes, chunks: list[bytes]) -> bytes:
    """The same header with other chunk contents (valid CRCs)."""
    c = container.read(data, max_pixels=None)
    return container.write(Container(c.header, chunks))


def flip(data: bytes, pos: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def put_u32(data: bytes, pos: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, pos, value)
    return bytes(b)


def some_header(**changes) -> Header:
    h = Header(width=300, height=200, tile=256, tokens=256, kept=20, chunk_tokens=8,
               model_name="odp-test", weights_hash=bytes(range(32)), entropy_model="pos-freq-v1")
    return replace(h, **changes)


def assemble(head: bytes, chunks: list[bytes] = ()) -> bytes:
    """A file from raw header-field bytes and chunk contents, with valid CRCs."""
    out = [MAGIC, struct.pack("<I", len(head)), head, struct.pack("<I", zlib.crc32(head))]
    for ch in chunks:
        out += [ch, struct.pack("<I", zlib.crc32(ch))]
    return b"".join(out)
