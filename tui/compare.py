"""The work behind `odp tui`, without any Textual: one photo against every codec at one budget.

`Photo.run` yields each pane as soon as it is ready, so the app's worker can show
progress and stop between steps when the user has moved on. Everything costly is
cached on the Photo: the one neural encode, each decoded file and its scores, and
the classic codecs' file sizes per quality. A new budget on an encoded photo costs a
truncation and a decode for ODP (no encode).
"""
from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

import odp
from ..codec.evaluation import classic, metrics
from ..codec.evaluation.settings import CLASSIC, SCALES
from .files import printable

TITLES = {"original": "original", "odp": "ODP", "jpeg": "JPEG", "webp": "WebP", "avif": "AVIF",
          "hull": "hull"}
CACHED_RESULTS = 24  # decoded images kept per photo (a 1.5 MP image is 4.5 MB)


@dataclass
class Shown:
    """What one pane shows: a decoded image and the size of its file, or why there is none."""

    label: str
    pixels: np.ndarray | None = None
    nbytes: int | None = None
    data: bytes | None = None           # the file itself (ODP only: `s` saves it)
    tokens: int | None = None           # ODP: tokens per tile kept
    whole: bool = False                 # ODP: the whole file (the budget holds more than ODP has to give)
    rank: float | None = None           # classic: its judge_metric score, to pick among the variants
    scores: dict | None = field(default_factory=dict)  # None: nothing to score against
    note: str = ""


@dataclass
class Update:
    """One finished step of Photo.run: the pane it filled and what comes next."""

    pane: str
    shown: Shown
    budget: int | None
    next: str


def is_odp(data: bytes) -> bool:
    return odp.is_odp(data)


class Photo:
    """A source image and everything measured on it so far."""

    def __init__(self, path: Path, metric_names: tuple[str, ...], fast: bool = False, device: str = "auto") -> None:
        with warnings.catch_warnings(record=True) as self.warnings:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                self.encoding = odp.Encoding(im, device=device)  # encodes when first asked for a file
        self.pixels = self.encoding.pixels  # EXIF turned, ICC applied: what ODP codes
        self.path, self.device = path, device
        self.height, self.width = self.pixels.shape[:2]
        self.metric_names = metric_names
        self.codecs = classic.available_codecs()
        if fast:  # the fast probe settings (WebP method 0, AVIF speed 8) instead of the slowest ones
            self.codecs = {k: replace(c, final=c.probe) for k, c in self.codecs.items()}
        self.full: bytes | None = None
        self.max_tokens = self.encoding.model_tokens  # until encoded: then what the whole file keeps
        self.variants: dict[tuple[str, int], classic.Variant] = {}
        self.results: OrderedDict[tuple, Shown] = OrderedDict()
        self._score = self._judge = None

    def bpp(self, nbytes: int) -> float:
        return nbytes * 8 / (self.width * self.height)

    def judge_metric(self) -> str:
        """How the hull picks among classic variants: MS-SSIM (cheap, and defined from 161 px), else PSNR."""
        return "ms-ssim" if min(self.width, self.height) >= metrics.MS_SSIM_MIN_SIDE else "psnr"

    def score(self, shown: Shown) -> Shown:
        if shown.pixels is not None and not shown.scores:
            if self._score is None:
                self._score = metrics.Scorer(self.pixels, self.metric_names)
            shown.scores = self._score(shown.pixels)
        return shown

    def _cached(self, key: tuple, make) -> Shown:
        if key not in self.results:
            self.results[key] = make()
            while len(self.results) > CACHED_RESULTS:
                self.results.popitem(last=False)
        self.results.move_to_end(key)
        return self.results[key]

    def odp(self, tokens: int | None = None, max_bytes: int | None = None) -> Shown:
        """ODP at `tokens` per tile (a cut of the first stage), or what `odp encode --bytes` makes for
        `max_bytes`: a thumbnail and tokens refining it (format version 4) where one fits; else the whole
        file's cut (into its refinement stage past the first stage's), or a smaller coding scale's when
        that cannot fit (odp.Encoding cuts one encode)."""
        self.full = self.encoding.whole
        self.max_tokens = round(odp.info(self.full).mean_tokens)  # tokens past it give the same file
        try:
            data = self.encoding.with_tokens(tokens) if max_bytes is None else self.encoding.within(max_bytes)
        except ValueError as e:  # not even one token per tile fits
            return Shown("ODP", note=str(e))
        info = odp.info(data)
        k = round(info.mean_tokens)
        if info.base:  # version 4: a thumbnail, then tokens refining it (coded at 2x, as its model does)
            at = f" on {'an AVIF' if info.base == 'avif' else 'a WebP'} 1/{info.base_shrink}"
        elif info.coded_width < info.width:
            at = f" at 1/{round(info.width / info.coded_width)}"
        else:
            at = f" at {round(info.coded_width / info.width)}x" if info.coded_width > info.width else ""
        whole = data == self.full
        refined = "".join(f" + {r.mean_tokens:.0f} refining" for r in info.refinements)

        def make() -> Shown:
            im = odp.decode(data, device=self.device).convert("RGB")  # a greyscale file decodes to L
            label = f"ODP {k} tokens" + at + refined + (" (whole file)" if whole else "")
            return Shown(label, np.asarray(im), len(data), data, k, whole=whole)
        return self._cached(("odp", info.coded_width, len(data)), make)

    def variant(self, codec: str, scale: int) -> classic.Variant:
        if (codec, scale) not in self.variants:
            self.variants[codec, scale] = classic.Variant(self.codecs[codec], scale, classic.shrink(self.pixels, scale))
        return self.variants[codec, scale]

    def at_scale(self, codec: str, scale: int, budget: int) -> Shown | None:
        """The highest quality of `codec` at `scale` whose file fits `budget` bytes (None: none does)."""
        v = self.variant(codec, scale)
        q = v.best_under(budget)
        if q is None:
            return None

        def make() -> Shown:
            data = v.data(q)
            label = f"{TITLES[codec]} q{q}" + (f" at 1/{scale}" if scale > 1 else "")
            return Shown(label, classic.decode(data, self.width, self.height), len(data))
        return self._cached((codec, scale, q), make)

    def classic(self, codec: str, budget: int) -> Shown:
        """`codec`'s best file within budget, at full size or downscaled (`odp bench`'s "+downscale"):
        at ODP's sizes a full-size file seldom fits, and an empty pane would tell the user nothing."""
        name = TITLES[codec]
        if codec not in self.codecs:
            return Shown(name, note=f"{name} is not available in this Pillow")
        return self.best([codec], budget) or Shown(name, note=f"no {name} file fits {budget:,} B, "
                                                              f"even downscaled to 1/{SCALES[-1]}")

    def hull(self, budget: int) -> Shown:
        """The best classic file within budget: every codec, every downscale (`odp bench`'s hull)."""
        return self.best([c for c in CLASSIC if c in self.codecs], budget) or Shown(
            "hull", note=f"no JPEG, WebP or AVIF file fits {budget:,} B, even downscaled to 1/{SCALES[-1]}")

    def best(self, codecs: list[str], budget: int) -> Shown | None:
        """The best of `codecs` at every scale of SCALES within budget, by judge_metric (None: nothing fits)."""
        m = self.judge_metric()
        if self._judge is None:
            self._judge = metrics.Scorer(self.pixels, (m,))
        fits = [s for c in codecs for scale in SCALES if (s := self.at_scale(c, scale, budget)) is not None]
        for s in fits:
            if s.rank is None:
                s.rank = self._judge(s.pixels)[m]
        best = None
        for s in fits:
            if best is None or metrics.better(m, s.rank, best.rank):
                best = s
        return best

    def run(self, tokens: int | None, max_bytes: int | None, hull: bool = True) -> Iterator[Update]:
        """Every pane at one budget, each step yielded: the budget is ODP's file at `tokens`, or `max_bytes`."""
        original = Shown("original", self.pixels, self.path.stat().st_size)
        yield Update("original", original, None, "ODP: encoding" if self.full is None else "ODP: decoding")
        odp = self.odp(None if max_bytes is not None else tokens, max_bytes)
        budget = max_bytes if max_bytes is not None else odp.nbytes
        yield Update("odp", odp, budget, "ODP: scoring")
        yield Update("odp", self.score(odp), budget, "JPEG: searching quality and scale")
        names = list(CLASSIC) + (["hull"] if hull else [])
        for i, codec in enumerate(names):
            s = self.hull(budget) if codec == "hull" else self.classic(codec, budget)
            yield Update(codec, s, budget, f"{TITLES[codec]}: scoring")
            nxt = f"{TITLES[names[i + 1]]}: searching quality and scale" if i + 1 < len(names) else "done"
            yield Update(codec, self.score(s), budget, nxt)


class OdpFile:
    """An .odp file on its own: its header, its truncation points, and decodes at any of them."""

    def __init__(self, path: Path, data: bytes, device: str = "auto") -> None:
        with warnings.catch_warnings(record=True) as self.warnings:
            warnings.simplefilter("always")
            self.model = odp.model_of(data)
        i = odp.info(data)
        self.path, self.data, self.device = path, data, device
        self.size = (i.width, i.height)  # as decoded
        self.kept = max(1, round(i.mean_tokens))  # tokens per tile on average
        # the file's own cut points (its layers), as (mean tokens per tile, bytes of the cut file)
        ends = {}
        for n in range(1, i.layers + 1):
            cut = odp.truncate(data, layers=n)
            ends[round(odp.info(cut).mean_tokens)] = len(cut)
        self.points = sorted(ends.items())
        spread = f", tiles {i.tokens_min}..{i.tokens_max} by need" if i.adaptive else ""
        scaled = (i.coded_width, i.coded_height) != (i.width, i.height)
        self.info = [
            f"ODP image {i.width}×{i.height}" + (f" (coded at {i.coded_width}×{i.coded_height})" if scaled else "")
            + f", {i.cols}×{i.rows} tiles of {i.tile} px (format v{i.version})",
            f"tokens:  {i.mean_tokens:.1f} of {i.model_tokens} per tile{spread}" + ("" if i.complete else " (file cut short)"),
            f"size:    {len(data)} bytes, {i.bpp:.4f} bpp",
            f"entropy: {i.bits_per_token:.3f} bits/token ({printable(i.entropy_model)})",
            f"model:   {printable(self.model.name)} sha256 {self.model.weights_sha256[:16]}",
            f"layers:  {i.layers} (points where the file can be cut as it is)",
        ]
        self.decoded: OrderedDict[int, Shown] = OrderedDict()

    def truncated(self, k: int) -> bytes:
        return odp.truncate(self.data, tokens=k)

    def tokens_within(self, max_bytes: int) -> int | None:
        try:
            return max(1, round(odp.info(odp.truncate(self.data, bytes=max_bytes)).mean_tokens))
        except ValueError:
            return None

    def at(self, k: int) -> Shown:
        k = max(1, min(k, self.kept))
        if k not in self.decoded:
            data = self.data if k == self.kept else self.truncated(k)
            im = odp.decode(data, device=self.device).convert("RGB")  # a greyscale file decodes to L
            self.decoded[k] = Shown(f"ODP {k} tokens", np.asarray(im), len(data), data, k, scores=None)
            while len(self.decoded) > CACHED_RESULTS:
                self.decoded.popitem(last=False)
        return self.decoded[k]


def open_any(path: Path, metric_names: tuple[str, ...], fast: bool, device: str) -> Photo | OdpFile:
    """A Photo, or an OdpFile when the bytes say so (by magic, never by extension)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if is_odp(head):
        return OdpFile(path, path.read_bytes(), device)
    if path.suffix.lower() == ".odp":
        odp.info(head)  # not ODP bytes: odp.FormatError says why (a zip: an OpenDocument presentation)
    return Photo(path, metric_names, fast, device)


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def sheet(cells: list[tuple[list[str], Shown]]) -> Image.Image:
    """The comparison as one picture: each pane's full image under its caption lines, 3 per row."""
    from PIL import ImageDraw, ImageFont, features

    h, w = cells[0][1].pixels.shape[:2]
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    size = max(10, w // 64)  # text about as wide as the picture, at any picture size
    # the binary leaves FreeType out (odp.spec): there, Pillow's small bitmap font
    font = ImageFont.load_default(size) if features.check("freetype2") else ImageFont.load_default()
    band = 6 + (size + 3) * max(len(lines) for lines, _ in cells)
    out = Image.new("RGB", (cols * w, rows * (h + band)), "white")
    draw = ImageDraw.Draw(out)
    for i, (lines, s) in enumerate(cells):
        x, y = (i % cols) * w, (i // cols) * (h + band)
        out.paste(Image.fromarray(s.pixels), (x, y + band))
        draw.multiline_text((x + 4, y + 3), "\n".join(lines).replace("×", "x"), fill="black", font=font, spacing=3)
    return out
