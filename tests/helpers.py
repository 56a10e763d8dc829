"""Small helpers shared by the test modules (imported as `helpers`; tests/ is on sys.path).

The .odp writers here follow the layout in formats/container.py's docstring independently of
container.pack_header and validate nothing, so that tests can forge files the real writer refuses.
"""
from __future__ import annotations

import io
import signal
import struct
import zlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from odp.formats import container
from odp.formats.container import (ENTROPY_MODELS, FLAG_CAPS, FLAG_DISPLAY, FLAG_EXIF, FLAG_GRAY, FLAG_ICC, FLAG_WEIGHTS,
                                   MAGIC, MAGIC_V1, VERSION,
                                   Container, Header, Layer)

DATA = Path(__file__).parent / "data"


def v1_file() -> bytes:
    """A real version-1 file written by the previous release: 320x240, 64 of 256 tokens per tile."""
    return (DATA / "v1" / "astronaut-v1.odp").read_bytes()


def v1_tokens() -> np.ndarray:
    """(2, 64) int16: the tokens the previous release decoded from v1_file()."""
    return np.load(DATA / "v1" / "astronaut-v1-tokens.npy", allow_pickle=False)


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


def flip(data: bytes, pos: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def put_u32(data: bytes, pos: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, pos, value)
    return bytes(b)


@contextmanager
def time_limit(seconds: float):
    """TimeoutError if the block runs longer than `seconds` (main thread only): a hang is a finding."""
    def expire(*_):
        raise TimeoutError(f"ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- file layout


def varint(n: int) -> bytes:
    """LEB128: 7 bits a byte, low bits first, high bit set on every byte but the last."""
    assert n >= 0
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(out + bytes([n]))


def header_end(data: bytes) -> int:
    """Offset of the first payload layer (v1 or v2), from the length fields alone."""
    n = container.header_size(data[:16])
    assert n is not None, "not an .odp file"
    return n


def layer_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each layer the header lists (a v1 chunk's span includes its CRC)."""
    _, table, pos = container.read_header(data, max_pixels=None)
    spans = []
    for _, n, _ in table:
        spans.append((pos, pos + n))
        pos += n
    return spans


chunk_spans = layer_spans  # the name from version 1


def fields_of(data: bytes) -> bytes:
    """The raw header fields of a version-2 file (between the header length and the CRC)."""
    assert data[:5] == MAGIC + bytes([VERSION])
    start = 5
    while data[start] & 0x80:  # the header length
        start += 1
    return data[start + 1:header_end(data) - 4]


def table_of(c: Container) -> list[tuple[int, int, int]]:
    """A container's layer table as header_fields takes it: (level, byte length, token check)."""
    return [(x.level, len(x.data), x.check) for x in c.layers]


def header_fields(h: Header, table: list[tuple[int, int, int]], flags: int | None = None,
                  code: int | None = None) -> bytes:
    """Version-2 header fields of h and a layer table, nothing checked. flags and the entropy-model
    code default to what h implies; a flag given without its data gets none (a forged file)."""
    if flags is None:
        flags = ((FLAG_ICC if h.icc else 0) | (FLAG_EXIF if h.exif else 0) | (FLAG_WEIGHTS if h.weights else 0)
                 | (FLAG_CAPS if h.caps else 0) | (FLAG_DISPLAY if h.scaled else 0) | (FLAG_GRAY if h.gray else 0))
    if code is None:
        codes = {v: k for k, v in ENTROPY_MODELS.items()}
        if h.entropy_model not in codes:
            raise ValueError(f"entropy model {h.entropy_model!r} has no version-2 code: pass code=")
        code = codes[h.entropy_model]
    out = [bytes([flags]), varint(h.width), varint(h.height), bytes([h.tile.bit_length() - 1]), varint(h.tokens),
           h.model_id, bytes([code])]
    if flags & FLAG_ICC:
        out += [varint(len(h.icc)), h.icc]
    if flags & FLAG_EXIF:
        out += [varint(len(h.exif)), h.exif]
    if flags & FLAG_WEIGHTS:
        out.append(h.weights)
    if flags & FLAG_CAPS:
        out.append(h.caps)
    if flags & FLAG_DISPLAY:
        out += [varint(h.display_size[0]), varint(h.display_size[1])]
    out.append(varint(len(table)))
    prev = 0
    for level, n, check in table:
        out += [varint(level - prev), varint(n // 4), struct.pack("<H", check)]
        prev = level
    return b"".join(out)


def assemble(fields: bytes, layers: list[bytes] = (), version: int = VERSION) -> bytes:
    """A version-2 file from raw header fields and layer bytes, with a valid header CRC."""
    head = bytes([version]) + varint(len(fields)) + fields
    return MAGIC + head + struct.pack("<I", zlib.crc32(head)) + b"".join(layers)


def assemble_v1(head: bytes, chunks: list[bytes] = ()) -> bytes:
    """A version-1 file from raw header fields and chunk contents, with valid CRCs."""
    out = [MAGIC_V1, struct.pack("<I", len(head)), head, struct.pack("<I", zlib.crc32(head))]
    for ch in chunks:
        out += [ch, struct.pack("<I", zlib.crc32(ch))]
    return b"".join(out)


def v1_head(data: bytes) -> bytes:
    """The header fields of a version-1 file (between its length and its CRC)."""
    assert data.startswith(MAGIC_V1)
    n = struct.unpack_from("<I", data, len(MAGIC_V1))[0]
    return data[len(MAGIC_V1) + 4:len(MAGIC_V1) + 4 + n]


def reheader(data: bytes, flags: int | None = None, code: int | None = None, **changes) -> bytes:
    """The same version-2 file with Header fields changed (CRC made valid again, layers as they were).

    Written with header_fields (flags and code as there), so values the writer refuses can be written
    too. Version 2 keeps no model name and a 4-byte model id: pass model_id=, not the version-1
    weights_hash=/model_name=.
    """
    c = container.read(data, max_pixels=None)
    if c.header.version != VERSION:
        raise ValueError("reheader rewrites version-2 files only")
    if "model_name" in changes:
        raise ValueError("version-2 headers hold no model name")
    h = replace(c.header, **changes)
    if len(h.model_id) != container.MODEL_ID_BYTES:
        raise ValueError(f"a version-2 model id is {container.MODEL_ID_BYTES} bytes")
    return assemble(header_fields(h, table_of(c), flags, code), [x.data for x in c.layers])


def with_header_length(data: bytes, n: int) -> bytes:
    """A version-2 file whose header-length varint says n (the CRC is left as it was)."""
    start = 5
    while data[start] & 0x80:
        start += 1
    return data[:5] + varint(n) + data[start + 1:]


def with_layers(data: bytes, layers: list[bytes]) -> bytes:
    """The same header, levels and token checks with other layer contents (the real writer:
    lengths must stay whole 32-bit words)."""
    c = container.read(data, max_pixels=None)
    assert len(layers) == len(c.layers), "one new content per layer"
    return container.write(Container(c.header, [Layer(x.level, d, x.check) for x, d in zip(c.layers, layers)]))


with_chunks = with_layers  # the name from version 1


def some_header(**changes) -> Header:
    """A valid version-2 header: 300x200 in 2 tiles of 256, 256 tokens, no metadata."""
    h = Header(width=300, height=200, tile=256, tokens=256, model_id=bytes(range(4)), entropy_model="pos-freq-v1")
    return replace(h, **changes)


def layers_for(levels: list[int], words: int = 1) -> list[Layer]:
    """Layers ending at `levels` with made-up contents (`words` 32-bit words each) and checks."""
    return [Layer(level, bytes([i + 1]) * (4 * words), 1000 + i) for i, level in enumerate(levels)]


def encode(im: Image.Image, tokens: int | None = None, max_bytes: int | None = None, model=None, device: str = "auto",
           batch: int | None = None, metadata: tuple[str, ...] = (), target: tuple[str, float] | None = None,
           quality: float | None = None, max_pixels: int | None = container.FROM_ENV, adaptive: bool = True,
           scale: int | str = "auto", refine: bool = False) -> bytes:
    """codec.coding.encode with its options as keywords (a `target` is ("psnr" | "ms-ssim", value)),
    and a chosen model: the shape most tests want. The first stage alone unless `refine`: most tests
    are about it, and the refinement stage has tests of its own (test_stages, test_refined)."""
    from odp.codec import coding, net_onnx
    from odp.codec.options import EncodeOptions

    if model is not None and hasattr(model, "entry") and net_onnx.has_graphs(model.entry):
        model = model.entry  # a shipped model: the network `odp encode` runs (ONNX on a CPU), not torch's;
        # a test that changes a model's weights in memory must encode through an Engine of its own
    name, value = target or (None, None)
    options = EncodeOptions(tokens=tokens, bytes=max_bytes, quality=quality, psnr=value if name == "psnr" else None,
                            msssim=value if name == "ms-ssim" else None, scale=scale, adaptive=adaptive,
                            metadata=metadata, device=device, batch=batch, max_pixels=max_pixels, refine=refine)
    return coding.encode(im, options, model)
