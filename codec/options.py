"""Encoding options: one frozen, validated object for the API, the batch API, the CLI and the Pillow plugin.

Validated once, here, with one-line messages (OptionError); no torch, no model.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from ..formats import container
from .errors import OptionError
from .imaging import METADATA

DEVICES = ("auto", "cpu", "cuda")
SCALE_CHOICES = ("auto", "psnr")  # besides a number: full size unless it cannot fit / the best PSNR
QUALITY_BPP = (0.002, 0.3)  # quality 1 and 100: the ends of a log scale of bits per pixel
SIZE_GOALS = ("tokens", "bytes", "bpp", "quality", "psnr", "msssim")


def quality_to_bpp(quality: float) -> float:
    """cwebp-like quality 1..100 -> a budget in bits per pixel, log-linear between QUALITY_BPP.

    A byte budget rather than a quantiser, because ODP's size is what truncation controls.
    """
    if not 1 <= quality <= 100:
        raise OptionError(f"quality {quality} is outside 1..100", "quality")
    lo, hi = QUALITY_BPP
    return lo * (hi / lo) ** ((quality - 1) / 99)


def count(value, name: str) -> int | None:
    """None, or a whole number >= 1 (bools refused: True is not a token count)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise OptionError(f"{name} must be at least 1, not {value}", name)
    return int(value)


def _positive(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise OptionError(f"{name} must be a positive number, not {value}", name)
    return float(value)


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode. At most one size goal: `tokens` per tile (on average), the largest file within
    `bytes` or `bpp`, a `quality` 1..100 (a budget from 0.002 to 0.3 bpp), or the smallest file
    whose decoded image reaches `psnr` (dB) or `msssim`; none keeps every token.

    `scale`: code at 1/scale of each side (1..16, enlarged back on decoding; or "1/2", "1/3", "1/4":
    coded larger, reduced back); "auto" (full size unless the budget cannot hold 1 token per tile, or
    enlarged where a budget or target asks for more than the full-size file holds) or "psnr" (the
    scale of highest PSNR).
    `adaptive`: tiles get tokens by need (False: every tile alike, several times faster).
    `refine`: where the model has a refinement stage and the image is coded at full size, the file
    goes on past the first stage's whole file into that stage (format version 3): one file from a
    thumbnail's bytes to the photo's, every cut valid. False: the first stage alone (a file of at
    most about 0.05 bpp, encoded faster).
    `base`: with a byte budget (bytes, bpp, quality) at scale "auto", start the file from a classic
    codec's thumbnail (AVIF or WebP, about 19/20 of the bytes) that the base model's tokens refine
    (format version 4; codec/thumbnail.py), where one fits and `refine` is on. False: tokens only.
    `metadata`: what to carry ("icc", "exif"); by default none (colours converted to sRGB).
    `device`: where the network runs ("auto": CUDA when torch sees a GPU). `batch`: tiles per
    network call. `max_pixels`: refuse larger images (default $ODP_MAX_PIXELS or 2**28).
    """

    tokens: int | None = None
    bytes: int | None = None
    bpp: float | None = None
    quality: float | None = None
    psnr: float | None = None
    msssim: float | None = None
    scale: int | float | str = "auto"
    adaptive: bool = True
    refine: bool = True
    base: bool = True
    metadata: tuple[str, ...] = ()
    device: str = "auto"
    batch: int | None = None
    max_pixels: int | None = container.FROM_ENV

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("tokens", "bytes", "batch"):
            set_(self, name, count(getattr(self, name), name))
        for name in ("bpp", "psnr"):
            set_(self, name, _positive(getattr(self, name), name))
        if self.quality is not None:
            q = _positive(self.quality, "quality")
            if not 1 <= q <= 100:
                raise OptionError(f"quality {self.quality} is outside 1..100", "quality")
            set_(self, "quality", q)
        if self.msssim is not None:
            m = _positive(self.msssim, "msssim")
            if m > 1:
                raise OptionError(f"msssim must be in (0, 1], not {self.msssim}", "msssim")
            set_(self, "msssim", m)
        goals = [g for g in SIZE_GOALS if getattr(self, g) is not None]
        if len(goals) > 1:
            raise OptionError(f"give at most one of {', '.join(SIZE_GOALS)} (got {' and '.join(goals)})")
        set_(self, "scale", _scale("auto" if self.scale is None else self.scale))
        for name in ("adaptive", "refine", "base"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {type(getattr(self, name)).__name__}")
        metadata = (self.metadata,) if isinstance(self.metadata, str) else tuple(self.metadata)
        unknown = set(metadata) - set(METADATA)
        if unknown:
            raise OptionError(f"unknown metadata {sorted(unknown)[0]!r}: choose from {', '.join(METADATA)}", "metadata")
        set_(self, "metadata", tuple(sorted(set(metadata))))
        if self.device not in DEVICES:
            raise OptionError(f"unknown device {self.device!r} (use auto, cpu or cuda)", "device")
        if self.max_pixels is not None and self.max_pixels != container.FROM_ENV:
            count(self.max_pixels, "max_pixels")

    @classmethod
    def from_keywords(cls, keywords: dict, what: str = "option") -> "EncodeOptions":
        """Options from a dict of keywords (Pillow's im.save(...) arguments), refusing unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise OptionError(f"unknown {what} {unknown[0]!r}: choose from {', '.join(sorted(known))}")
        return cls(**keywords)

    @property
    def target(self) -> tuple[str, float] | None:
        """(metric, value) of a quality target, "psnr" or "ms-ssim", or None."""
        if self.psnr is not None:
            return "psnr", self.psnr
        if self.msssim is not None:
            return "ms-ssim", self.msssim
        return None

    def budget(self, width: int, height: int) -> int | None:
        """The byte budget for an image of this size (from bytes, bpp or quality), or None."""
        if self.bytes is not None:
            return self.bytes
        if self.bpp is not None:
            return int(self.bpp * width * height / 8)
        if self.quality is not None:
            return int(quality_to_bpp(self.quality) * height * width / 8)
        return None


ENLARGING_SCALES = (1 / 2, 1 / 3, 1 / 4)  # code at 2, 3 or 4 times each side (container.MAX_REDUCE)


def _scale(scale) -> int | float | str:
    """A coding scale as given (int, "N", "1/N", 1/N, "auto", "psnr") -> int 1..16, float 1/N, or the word."""
    fractions = [f"1/{round(1 / f)}" for f in ENLARGING_SCALES]
    wrong = OptionError(f"scale {scale!r} is not one of {', '.join(SCALE_CHOICES)}, a whole number "
                        f"1..{container.MAX_ENLARGE}, {', '.join(fractions[:-1])} or {fractions[-1]}", "scale")
    if isinstance(scale, str):
        word = scale.strip().lower()
        if word in SCALE_CHOICES:
            return word
        if word.isdigit():
            scale = int(word)
        elif word in fractions:
            scale = ENLARGING_SCALES[fractions.index(word)]
        else:
            raise wrong
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number or one of {', '.join(SCALE_CHOICES)}, not {type(scale).__name__}")
    near = [f for f in ENLARGING_SCALES if abs(f - scale) < 1e-9]
    if near:
        return near[0]
    if scale != int(scale) or not 1 <= scale <= container.MAX_ENLARGE:
        raise wrong
    return int(scale)
