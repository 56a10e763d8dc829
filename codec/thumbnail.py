"""The base thumbnail of a version-4 file: the image shrunk and coded by a classic codec (Pillow's AVIF or
WebP), which the file's first stage of tokens refines (docs/format.md, "Version 4").

Below about 0.1 bpp a classic codec's small thumbnail, enlarged, is a faithful picture where the
tokenizer alone draws faded colours and blotches; the conditioned model then only adds what the
thumbnail misses (texture, edges). Its decoders are deterministic integer code, so every machine
shows the same base. No torch here.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..formats.container import BASE_CODECS, FormatError, Header
from .quality import psnr

# Pillow's format name and encoder settings per base codec: those the refinement model was trained on
# (codec/training/configs/odp-refine-classic.toml); fast ones, the model learns their artefacts.
FORMATS = {"avif": ("AVIF", {"speed": 6}), "webp": ("WEBP", {"method": 4})}
QUALITIES = {"avif": range(0, 51), "webp": range(0, 81)}   # the qualities the model saw in training
SHRINKS = (1, 2, 4, 8)
CODE = {name: code for code, name in BASE_CODECS.items()}

# An AVIF base is stored packed (codec "avif-packed"): the boxes before its coded image (ftyp, meta and the
# mdat box's header: about 275 bytes that differ between thumbnails only in sizes and a few fields) raw-
# deflated against AVIF_BOXES, to about 20 bytes; the coded image follows as it is. At 0.01 bpp of a
# 768x512 photo (491 bytes) those boxes would be half the budget. AVIF_BOXES is part of the format
# (docs/format.md): the boxes of one thumbnail as Pillow 13 (libavif) wrote them, frozen here for good.
AVIF_BOXES = bytes.fromhex(
    "00000020667479706176696600000000617669666d6966316d6961664d413142000000eb6d6574610000000000000021"
    "68646c72000000000000000070696374000000000000000000000000000000000e7069746d0000000000010000001e69"
    "6c6f630000000044000001000100000001000001130000012c0000002869696e660000000000010000001a696e666502"
    "0000000001000061763031436f6c6f72000000006a697072700000004b6970636f000000146973706500000000000000"
    "6000000040000000107069786900000000030808080000000c6176314381000c0000000013636f6c726e636c78000100"
    "0d0006800000001769706d61000000000000000100010401028304000001346d646174")
MAX_AVIF_BOXES = 1 << 16      # a packed base whose boxes inflate to more is refused (untrusted input)
STORED = {"avif": "avif-packed", "webp": "webp"}                 # how the encoder stores each codec's file
PICTURE = {c: c for c in FORMATS} | {v: c for c, v in STORED.items()}  # the codec of each stored form's file


def _coded_image_start(data: bytes) -> int | None:
    """Where an AVIF file's mdat payload starts (its top-level boxes walked), or None."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"mdat":
            return pos + (16 if size == 1 else 8)
        if size < 8:
            return None
        pos += size
    return None


def pack(codec: str, data: bytes) -> tuple[str, bytes]:
    """(stored codec, bytes): a codec's file as a version-4 file holds it (an AVIF one packed, where its
    boxes are found and come back whole)."""
    cut = _coded_image_start(data) if STORED[codec] == "avif-packed" else None
    if cut is None:
        return codec, data
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=AVIF_BOXES)
    packed = z.compress(data[:cut]) + z.flush() + data[cut:]
    return ("avif-packed", packed) if unpack("avif-packed", packed) == data else (codec, data)


def unpack(stored: str, data: bytes) -> bytes:
    """The codec's own file from a stored base (FormatError, one line, where packed boxes are bad)."""
    if stored != "avif-packed":
        return data
    z = zlib.decompressobj(-15, zdict=AVIF_BOXES)
    try:
        boxes = z.decompress(data, MAX_AVIF_BOXES)
    except zlib.error as e:
        raise FormatError(f"base thumbnail's packed AVIF boxes do not inflate (the file is corrupt): {e}") from None
    if not z.eof:
        raise FormatError("base thumbnail's packed AVIF boxes are cut short or too large: the file is corrupt")
    return boxes + z.unused_data


def shrink(pixels: np.ndarray, factor: int) -> Image.Image:
    """The RGB image `pixels` shrunk `factor` times each side (Lanczos), as Header.base_size rounds."""
    h, w = pixels.shape[:2]
    im = Image.fromarray(pixels, "RGB")
    return im if factor == 1 else im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.LANCZOS)


def encode(small: Image.Image, codec: str, quality: int) -> bytes:
    fmt, settings = FORMATS[codec]
    buf = io.BytesIO()
    small.save(buf, fmt, quality=quality, **settings)
    return buf.getvalue()


def decode(data: bytes, codec: str, size: tuple[int, int], display: tuple[int, int]) -> np.ndarray:
    """A base thumbnail's pixels enlarged to `display` (uint8 RGB). FormatError (one line) unless the
    bytes are a `codec` file (stored form) of exactly `size` pixels: checked from its header, before
    decoding."""
    fmt = FORMATS[PICTURE[codec]][0]
    data = unpack(codec, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            if im.size != size:
                raise FormatError(f"base thumbnail is {im.size[0]}x{im.size[1]}, not the {size[0]}x{size[1]} "
                                  "its header says: the file is corrupt")
            im = im.convert("RGB")
    except FormatError:
        raise
    except Exception as e:  # Pillow raises many kinds for bad bytes
        raise FormatError(f"base thumbnail does not decode as {fmt} (the file is corrupt): {e}") from None
    return np.asarray(im if im.size == display else im.resize(display, Image.LANCZOS))


def picture(h: Header) -> np.ndarray:
    """What a version-4 file's base shows, at the display size."""
    return decode(h.base, BASE_CODECS[h.base_codec], h.base_size, h.display_size)


@dataclass
class Base:
    """A base thumbnail the encoder chose: its codec, shrink, file and picture (display size)."""
    codec: str
    shrink: int
    data: bytes
    picture: np.ndarray


class Candidates:
    """Every base codec at every shrink of one image; the files made while searching are kept, so
    several budgets share the work."""

    def __init__(self, pixels: np.ndarray, shrinks=SHRINKS):
        self.pixels = pixels
        h, w = pixels.shape[:2]
        self.smalls = {s: shrink(pixels, s) for s in shrinks if s == 1 or min(w, h) >= 4 * s}
        self.made: dict[tuple[str, int, int], tuple[str, bytes]] = {}

    def file(self, codec: str, s: int, q: int) -> tuple[str, bytes]:
        """(stored codec, bytes) of the codec's file of the image shrunk s times at quality q."""
        if (codec, s, q) not in self.made:
            self.made[codec, s, q] = pack(codec, encode(self.smalls[s], codec, q))
        return self.made[codec, s, q]

    def largest_within(self, codec: str, s: int, max_bytes: int) -> tuple[str, bytes] | None:
        """The stored file of the highest quality in QUALITIES whose size is at most max_bytes (size grows
        with quality almost always; a bisection), or None."""
        qs = QUALITIES[codec]
        lo, hi = qs.start, qs.stop - 1
        if len(self.file(codec, s, lo)[1]) > max_bytes:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.file(codec, s, mid)[1]) <= max_bytes:
                lo = mid
            else:
                hi = mid - 1
        return self.file(codec, s, lo)

    def best_within(self, max_bytes: int) -> Base | None:
        """Of each codec's and shrink's largest file within max_bytes, the one whose picture has the
        highest PSNR; None when none fits."""
        h, w = self.pixels.shape[:2]
        best, score = None, -1.0
        for codec in FORMATS:
            for s, small in self.smalls.items():
                made = self.largest_within(codec, s, max_bytes)
                if made is None:
                    continue
                stored, data = made
                pic = decode(data, stored, small.size, (w, h))
                p = psnr(self.pixels, pic)
                if p > score:
                    best, score = Base(stored, s, data, pic), p
        return best
