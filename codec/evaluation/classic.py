"""The codecs people already use, through Pillow, and the downscale trick.

A *variant* is a codec at a scale: the image is shrunk by `scale` (Lanczos), coded,
decoded and enlarged back (Lanczos). At tiny budgets this beats coding at full size,
and it is the baseline a savvy user would reach for. `best_under` finds the best
setting whose file fits a byte budget, headers included.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .. import thumbnail
from ..thumbnail import shrink  # noqa: F401  (the bench shrinks its photos as a file's base does)


@dataclass(frozen=True)
class Codec:
    name: str
    pillow_format: str
    qualities: range
    final: dict          # the slowest, best settings: what is measured
    probe: dict          # fast settings, only to guess the quality before the slow encodes

    def encode(self, im: Image.Image, quality: int, fast: bool = False) -> bytes:
        buf = io.BytesIO()
        im.save(buf, self.pillow_format, quality=quality, **(self.probe if fast else self.final))
        return buf.getvalue()


def _jxl_available() -> bool:
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
    except ImportError:
        return False
    return True


def available_codecs() -> dict[str, Codec]:
    """Codecs this Pillow can write: JPEG, WebP, AVIF, and JPEG XL with pillow-jxl-plugin."""
    from PIL import features

    codecs = {"jpeg": Codec("jpeg", "JPEG", range(1, 101), {"optimize": True}, {"optimize": True})}
    if features.check("webp"):
        codecs["webp"] = Codec("webp", "WEBP", range(0, 101), {"method": 6}, {"method": 0})
    if features.check("avif"):
        codecs["avif"] = Codec("avif", "AVIF", range(0, 101), {"speed": 0}, {"speed": 8})
    if _jxl_available():
        # quality 100 means lossless, which pillow-jxl-plugin refuses without lossless=True
        codecs["jxl"] = Codec("jxl", "JXL", range(0, 100), {"effort": 9}, {"effort": 7})
    return codecs


# Fast settings for a thumbnail that a file would carry as its first layer (the classic-base experiment,
# codec/training/classicbase.py): the same for its training, its candidate files and the hull it meets.
THUMBNAIL_CODECS = {name: Codec(name, fmt, range(0, 101), settings, settings)  # a version-4 file's base codecs
                    for name, (fmt, settings) in thumbnail.FORMATS.items()}


def decode(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode a classic file and enlarge it back to width x height."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if im.size != (width, height):
        im = im.resize((width, height), Image.LANCZOS)
    return np.asarray(im)


@dataclass
class Variant:
    """One codec at one scale for one image, remembering every file it has produced (the slow
    settings take up to a minute per megapixel: the file that wins a budget is not coded twice)."""

    codec: Codec
    scale: int
    small: Image.Image
    files: dict = field(default_factory=dict)       # quality -> file at the final settings
    probes: dict = field(default_factory=dict)      # quality -> probe size

    def data(self, quality: int) -> bytes:
        if quality not in self.files:
            self.files[quality] = self.codec.encode(self.small, quality)
        return self.files[quality]

    def size(self, quality: int) -> int:
        return len(self.data(quality))

    def _probe(self, quality: int) -> int:
        if quality not in self.probes:
            self.probes[quality] = len(self.codec.encode(self.small, quality, fast=True))
        return self.probes[quality]

    def best_under(self, max_bytes: int) -> int | None:
        """The highest quality whose final file fits max_bytes (None if even the lowest does not).

        File size grows with quality (nearly always): a binary search on the fast probe
        guesses the quality, then a galloping search on the slow final encoder settles it
        with a few encodes near the budget (high qualities are the slowest to encode).
        """
        qs = self.codec.qualities
        lo, hi = 0, len(qs) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._probe(qs[mid]) <= max_bytes:
                lo = mid
            else:
                hi = mid - 1
        fits = lambda i: self.size(qs[i]) <= max_bytes  # noqa: E731
        lo = hi = lo  # the probe's guess; now gallop on the final encoder to bracket the answer
        if fits(lo):
            step = 1
            while hi + step < len(qs) and fits(hi + step):
                lo = hi = hi + step
                step *= 2
            hi = min(hi + step, len(qs) - 1)
            if fits(hi):
                return qs[hi]
        else:
            step = 1
            while True:
                hi, lo = lo, max(lo - step, 0)
                if fits(lo):
                    break
                if lo == 0:
                    return None
                step *= 2
        while hi - lo > 1:  # lo fits, hi does not
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return qs[lo]
