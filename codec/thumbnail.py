"""The base thumbnail of a version-4 file: the image shrunk and coded by a classic codec (Pillow's AVIF or
WebP), which the file's first stage of tokens refines (docs/format.md, "Version 4").

Below about 0.1 bpp a classic codec's small thumbnail, enlarged, is a faithful picture where the
tokenizer alone draws faded colours and blotches; the conditioned model then only adds what the
thumbnail misses (texture, edges). Its decoders are deterministic integer code, so every machine
shows the same base. No torch here.
"""
from __future__ import annotations

import io
import warnings
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
    bytes are a `codec` file of exactly `size` pixels: checked from its header, before decoding."""
    fmt = FORMATS[codec][0]
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
        self.made: dict[tuple[str, int, int], bytes] = {}

    def file(self, codec: str, s: int, q: int) -> bytes:
        if (codec, s, q) not in self.made:
            self.made[codec, s, q] = encode(self.smalls[s], codec, q)
        return self.made[codec, s, q]

    def largest_within(self, codec: str, s: int, max_bytes: int) -> bytes | None:
        """The file of the highest quality in QUALITIES whose size is at most max_bytes (size grows with
        quality almost always; a bisection), or None."""
        qs = QUALITIES[codec]
        lo, hi = qs.start, qs.stop - 1
        if len(self.file(codec, s, lo)) > max_bytes:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.file(codec, s, mid)) <= max_bytes:
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
                data = self.largest_within(codec, s, max_bytes)
                if data is None:
                    continue
                pic = decode(data, codec, small.size, (w, h))
                p = psnr(self.pixels, pic)
                if p > score:
                    best, score = Base(codec, s, data, pic), p
        return best
