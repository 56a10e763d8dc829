"""Choosing the file: the coding scale, and the cut that meets a byte budget or a quality target.

An image is coded whole once (per scale); every size goal is then a truncation of that file,
picked here: the largest within a budget, or the smallest whose decoded image reaches a PSNR
or MS-SSIM. Smaller coding scales are encoded only when a goal needs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..entropy.coder import KnownTokens
from . import registry, thumbnail, tiling
from .allocation import allocation
from .engine import Engine
from .errors import OptionError
from .imaging import Prepared, enlarge_bicubic, resize, scaled_size
from .options import ENLARGING_SCALES
from .quality import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from .refinement import EXTEND_SCALE, REFINE_MAX_PIXELS, refine, shown, stage_picture
from .stream import container, cut_last_stage, min_first_layer_bytes, pack, stage_cut_within, truncate

SCALES = (1, 2, 3, 4)  # coding scales the encoder may try (docs/api.md, "Coding scale")
# Coded pixels up to which the encoder tries coding larger on its own (ENLARGING_SCALES): a budget
# past the full-size file of a larger photo is kept by that file, not paid for with minutes of work.
AUTO_ENLARGE_MAX_PIXELS = 12_000_000
TARGET_METRICS = ("psnr", "ms-ssim")


@dataclass
class Coded:
    """A whole file of one image coded at 1/scale, with its tokens (to render any truncation
    without entropy decoding)."""
    scale: int
    data: bytes
    tokens: np.ndarray


def encode_at(p: Prepared, scale: int, engine: Engine, adaptive: bool = True,
              toks: np.ndarray | None = None) -> Coded:
    """The whole file of prepared pixels, coded at 1/scale of their size and enlarged back on decoding;
    `toks`: their tokens at that scale, if already made (coding.encode_many batches them)."""
    height, width = p.pixels.shape[:2]
    size = scaled_size(width, height, scale)
    pixels = resize(p.pixels, size)
    toks = engine.encode(pixels) if toks is None else toks
    model = engine.entry
    entropy = KnownTokens(model.best_entropy, toks)  # the allocation and the coding share its tables
    weights_, caps = allocation(toks, pixels, engine, entropy) if adaptive else (b"", b"")
    display = (width, height) if size != (width, height) else (0, 0)
    return Coded(scale, pack(toks, *size, model, p.icc, p.exif, weights_, caps=caps, display=display,
                             gray=p.gray, entropy=entropy), toks)


def render(coded: Coded, data: bytes, engine: Engine) -> np.ndarray:
    """The decoded pixels of `data`, a truncation of coded.data, from the tokens (no entropy decoding)."""
    c = container.read(data)
    return engine.picture(coded.tokens, c.header, c.level)


def scales_for(width: int, height: int, tile: int, scales=SCALES) -> list[int]:
    """The scales worth trying: each must code the image in fewer tiles than the one before it."""
    out, prev = [], None
    for s in scales:
        n = tiling.grid(*scaled_size(width, height, s), tile)
        if prev is None or n[0] * n[1] < prev:
            out.append(s)
            prev = n[0] * n[1]
    return out


def least_bytes(width: int, height: int, entry, scales) -> int:
    """Fewest bytes any file of a width x height image can have at these coding scales: its header with
    one layer, and that layer's least bytes (stream.min_first_layer_bytes, at least one word). Known
    before the network runs, so a budget below it is refused before any work."""
    least = None
    for s in scales:
        size = scaled_size(width, height, s)
        display = (width, height) if size != (width, height) else (0, 0)
        h = container.Header(*size, entry.tile, entry.tokens, entry.sha256[:container.MODEL_ID_BYTES],
                             entry.best_entropy.id, display_width=display[0], display_height=display[1])
        words = max(1, -(-min_first_layer_bytes(h.tiles, entry.best_entropy) // 4))
        n = len(container.MAGIC) + len(container.pack_header(h, [container.Layer(1, bytes(4 * words), 0)])) + 4 * words
        least = n if least is None else min(least, n)
    return least


@dataclass
class Refined:
    """A file ending in a refinement stage, whole: the full-size file and its stages."""
    data: bytes              # the whole file (format version 3)
    tokens: np.ndarray       # its last stage's tokens
    so_far: np.ndarray       # the picture before that stage (display size), which the stage refines
    engine: Engine           # the refinement model's

    def picture(self, level: int | None = None) -> np.ndarray:
        """What the file shows with its last stage cut at `level` (default: all of it); of a version-4
        file without later stages, its first stage's."""
        c = container.read(self.data)
        stage = c.stages[-1] if c.stages else c
        return stage_picture(self.engine, self.tokens, stage.header, stage.level if level is None else level,
                             self.so_far)


def stage_fits(width: int, height: int, scale: int, max_pixels) -> bool:
    """Whether a stage coded at `scale` times each side of a width x height picture is within the
    encoder's REFINE_MAX_PIXELS and the pixel limit."""
    pixels, limit = width * height * scale ** 2, container.pixel_limit(max_pixels)
    return pixels <= REFINE_MAX_PIXELS and (limit is None or pixels <= limit)


class ScaleLadder:
    """One image coded at full size, then at each smaller scale of scales_for, each encoded only when
    first asked for: what `scale="auto"` walks down until a budget fits, and `scale="psnr"` compares.
    With `refine`, the full-size file can go on into the model's refinement stage (registry.refinement_for),
    whose network is opened and run only when first asked for (`refined`), and past that stage's whole
    file into the same model's stage at EXTEND_SCALE (`extended`), made only for a goal beyond it."""

    def __init__(self, p: Prepared, engine: Engine, adaptive: bool = True, full_tokens: np.ndarray | None = None,
                 refine: bool = False, max_pixels: int | None = container.FROM_ENV, base: bool = False):
        self.p, self.engine, self.adaptive = p, engine, adaptive
        self.scales = scales_for(p.pixels.shape[1], p.pixels.shape[0], engine.tile)
        self.encoded: list[Coded] = []
        self.full_tokens = full_tokens  # the full-size tokens, when made beforehand
        self.larger: dict[float, Coded] = {}  # coded at ENLARGING_SCALES, once a goal asked for them
        height, width = p.pixels.shape[:2]
        stage = registry.refinement_for(engine.entry) if refine else None
        if stage is not None and not stage_fits(width, height, stage.scale, max_pixels):
            stage = None  # too large a stage for this photo: its file stays single-stage
        self.stage_model = stage  # the refinement model's registry Entry, or None
        self.can_extend = stage is not None and stage_fits(width, height, EXTEND_SCALE, max_pixels)
        self._refined: Refined | None = None
        self._refiner: Engine | None = None
        self._extended: Refined | None = None
        based = registry.base_model() if base else None
        if based is not None and not stage_fits(width, height, based.scale, max_pixels):
            based = None
        self.base_model = based  # the model of version-4 files (a classic base thumbnail), or None
        self._thumbs: thumbnail.Candidates | None = None
        self._based: dict = {}   # whole version-4 files by base

    def warm_refined(self) -> None:
        """For a caller that will ask for `refined`: start opening the networks it runs (the first stage's
        encoder and decoder, the refinement stage's encoder) while the first stage's work begins."""
        if self.stage_model is not None:
            self.engine.warm("encoder", "decoder")
            self._refiner_engine().warm("encoder")

    def _refiner_engine(self) -> Engine:
        """The refinement stage's Engine, made once (on the first stage's device, batch and progress)."""
        if self._refiner is None:
            e = self.engine
            self._refiner = Engine(self.stage_model, e.device, e.batch, e.progress)
        return self._refiner

    @property
    def refined(self) -> Refined | None:
        """The full-size file with the refinement stage after it (None without a refinement model)."""
        if self._refined is None and self.stage_model is not None:
            e, refiner = self.engine, self._refiner_engine()
            full = self.full
            so_far = render(full, full.data, e)
            data, tokens = refine(full.data, self.p.pixels, refiner, so_far=so_far)
            self._refined = Refined(data, tokens, so_far, refiner)
        return self._refined

    @property
    def extended(self) -> Refined | None:
        """The refined file with a further stage after it: the refinement model again, coding the image
        at EXTEND_SCALE times each side given the refined picture (None where it cannot: no refinement
        model, or a stage too large for this photo). Several times the refinement stage's work."""
        if self._extended is None and self.can_extend:
            r = self.refined
            so_far = r.picture()
            data, tokens = refine(r.data, self.p.pixels, r.engine, scale=EXTEND_SCALE, so_far=so_far)
            self._extended = Refined(data, tokens, so_far, r.engine)
        return self._extended

    def based(self, base: thumbnail.Base) -> Refined:
        """The whole version-4 file on `base`: every token of the base model's first stage."""
        key = (base.codec, base.shrink, base.data)
        if key not in self._based:
            e, model = self.engine, self.base_model
            engine = Engine(model, e.device, e.batch, e.progress)
            p, s = self.p, model.scale
            height, width = p.pixels.shape[:2]
            tokens = engine.encode(enlarge_bicubic(p.pixels, s), cond=enlarge_bicubic(base.picture, s))
            data = pack(tokens, width * s, height * s, model, p.icc, p.exif, display=(width, height), gray=p.gray,
                        base=base)
            self._based[key] = Refined(data, tokens, base.picture, engine)
        return self._based[key]

    def base_within(self, max_bytes: int, share: float | None = None, alone: bool = False) -> thumbnail.Base | None:
        """The base thumbnail of a version-4 file within max_bytes: the best by PSNR within `share`
        (BASE_SHARE) of the bytes the header leaves (`alone`: the header of the thumbnail with no layer);
        None without a base model, or where none fits."""
        if self.base_model is None:
            return None
        if self._thumbs is None:
            self._thumbs = thumbnail.Candidates(self.p.pixels)
        framing = container.base_framing(self.based_header(alone=alone), max_bytes)
        return self._thumbs.best_within(int((max_bytes - framing) * (BASE_SHARE if share is None else share)))

    def based_header(self, base: thumbnail.Base | None = None, alone: bool = False) -> container.Header:
        """The header of a version-4 file on `base` (as stream.pack writes it; without one, a placeholder
        base for measuring the framing); `alone`: of the file that is the thumbnail with no token layer,
        which names the model trained to draw it (registry.thumbnail_model)."""
        height, width = self.p.pixels.shape[:2]
        m = registry.thumbnail_model(self.base_model) if alone else self.base_model
        s = m.scale
        # without a base (measuring the framing), an empty full-size one, so that its low band's byte is counted
        base = base or thumbnail.Base("avif", 1, b"", np.empty((0, 0, 3), np.uint8))
        return container.Header(width * s, height * s, m.tile, m.tokens, m.sha256[:container.MODEL_ID_BYTES],
                                m.best_entropy.id, icc=self.p.icc, exif=self.p.exif, display_width=width,
                                display_height=height, gray=self.p.gray, base_codec=thumbnail.CODE[base.codec],
                                base_shrink=base.shrink, base=base.data,
                                base_low_band=0 if alone else base.low_band)  # none for the thumbnail alone

    def enlarged(self, scale: float) -> Coded:
        if scale not in self.larger:
            self.larger[scale] = encode_at(self.p, scale, self.engine, self.adaptive)
        return self.larger[scale]

    def __iter__(self):
        for i, s in enumerate(self.scales):
            if i == len(self.encoded):
                made = self.full_tokens if s == 1 else None
                self.encoded.append(encode_at(self.p, s, self.engine, self.adaptive, made))
            yield self.encoded[i]

    @property
    def full(self) -> Coded:
        return next(iter(self))


def _cuts_within(codeds, max_bytes: int):
    """(largest truncation within max_bytes, coded file) for each coded file that has one; when none
    has, the ValueError truncate raised for the last (the smallest scale, so it names the fewest
    bytes that would do)."""
    last_error, found = None, False
    for coded in codeds:
        try:
            data = truncate(coded.data, max_bytes=max_bytes)
        except ValueError as e:
            last_error = e
            continue
        found = True
        yield data, coded
    if not found:
        raise last_error


def first_within(codeds, max_bytes: int) -> tuple[bytes, Coded]:
    """The largest truncation within max_bytes of the first coded file (of an iterable, so later ones
    can be encoded only when needed) that has one. ValueError when none fits."""
    return next(_cuts_within(codeds, max_bytes))


def best_within(codeds: list[Coded], max_bytes: int, reference: np.ndarray, engine: Engine) -> tuple[bytes, Coded]:
    """Of each coded file's largest truncation within max_bytes, the one of highest PSNR against
    `reference` (the first on ties). ValueError when none fits, as truncate raises it for the last."""
    cuts = list(_cuts_within(codeds, max_bytes))
    if len(cuts) == 1:
        return cuts[0]
    scores = [psnr(reference, render(coded, data, engine)) for data, coded in cuts]
    return cuts[scores.index(max(scores))]


def _scorer(target: tuple[str, float], pixels: np.ndarray):
    """A function of a decoded picture: whether it reaches `target` against `pixels`."""
    name, value = target
    if name not in TARGET_METRICS:
        raise OptionError(f"unknown target metric {name!r}: choose from {', '.join(TARGET_METRICS)}")
    score = {"psnr": psnr, "ms-ssim": ms_ssim}[name]
    height, width = pixels.shape[:2]
    if name == "ms-ssim" and min(height, width) < MS_SSIM_MIN_SIDE:
        raise OptionError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} pixels a side")
    return lambda decoded: score(pixels, decoded) >= value


def _lowest(reaches, lo: int, hi: int) -> int | None:
    """The lowest level in lo..hi that reaches, by bisection (quality rises with the level on
    average; every candidate is decoded and measured); None when not even `hi` does."""
    if not reaches(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def level_reaching(coded: Coded, data: bytes, pixels: np.ndarray, target: tuple[str, float],
                   engine: Engine) -> int | None:
    """The lowest allocation level of `data` (a cut of coded.data) whose decoded image (enlarged to the
    display size) reaches `target` against `pixels`. None when even all of `data` falls short."""
    ok = _scorer(target, pixels)
    f = container.read(data)
    return _lowest(lambda level: ok(engine.picture(coded.tokens, f.header, level)), 1, f.level)


def refined_reaching(ladder: ScaleLadder, target: tuple[str, float]) -> bytes | None:
    """The smallest cut of the refinement stage whose picture reaches `target`; where all of it falls
    short, of the further stage (ScaleLadder.extended); None when not even that does (or no stage)."""
    ok = _scorer(target, ladder.p.pixels)
    for name in ("refined", "extended"):
        r = getattr(ladder, name)
        if r is None:
            return None
        level = _lowest(lambda lv: ok(r.picture(lv)), 1, container.read(r.data).stages[-1].level)
        if level is not None:
            return cut_last_stage(r.data, level, r.tokens)
    return None


def refined_within(ladder: ScaleLadder, data: bytes, coded: Coded, max_bytes: int) -> bytes:
    """When the whole full-size file (`data`) fits max_bytes with bytes to spare, the file with the
    refinement stage cut to max_bytes; when the refinement stage's whole file leaves bytes too, the
    further stage's cut (extended_within). Any other file as it is."""
    if coded.scale != 1 or data != coded.data or len(data) >= max_bytes or ladder.refined is None:
        return data
    if len(ladder.refined.data) < max_bytes and ladder.can_extend:
        return extended_within(ladder, max_bytes)
    return stage_cut_within(ladder.refined.data, max_bytes, ladder.refined.tokens)


# The further stage's cuts up to this many times the refined file's bytes are checked against that
# file: its first layers can cost more than they add (held-out training photos: -0.04 dB at +3% of
# the bytes, +0.5 dB at +35%); past it, they added more every time we measured.
EXTEND_CHECKED = 1.25


def extended_within(ladder: ScaleLadder, max_bytes: int) -> bytes:
    """The further stage's cut within max_bytes, past the refinement stage's whole file; that whole
    file instead where the cut's picture has a lower PSNR (its first tokens can cost more than they add)."""
    return extension_within(ladder.refined.data, ladder.extended, max_bytes, ladder.p.pixels)


def extension_within(whole: bytes, ext: Refined, max_bytes: int, pixels: np.ndarray) -> bytes:
    """`ext` (the file `whole` with a further stage) cut within max_bytes; `whole` where not even a layer
    of that stage fits, or where the cut, up to EXTEND_CHECKED times whole's bytes, decodes to a lower
    PSNR than `whole`."""
    cut = stage_cut_within(ext.data, max_bytes, ext.tokens)
    if len(container.read(cut).stages) == len(container.read(whole).stages):  # not even a layer of it fits
        return whole
    if len(cut) > EXTEND_CHECKED * len(whole):
        return cut
    level = container.read(cut).stages[-1].level
    return cut if psnr(pixels, ext.picture(level)) >= psnr(pixels, ext.so_far) else whole


def enlargements(p: Prepared):
    """The larger coding scales worth trying on their own for these pixels, in order (2x, 3x, 4x)."""
    height, width = p.pixels.shape[:2]
    for s in ENLARGING_SCALES:
        w, h = scaled_size(width, height, s)
        if w * h > AUTO_ENLARGE_MAX_PIXELS:
            return
        yield s


def enlarged_within(ladder: ScaleLadder, data: bytes, coded: Coded, max_bytes: int) -> tuple[bytes, Coded]:
    """When the whole full-size file (`data`) fits max_bytes with bytes to spare, the image coded
    larger may spend them: each larger scale's largest cut within max_bytes replaces the file while it
    decodes to a higher PSNR (it does not at first: a larger scale needs more bytes to catch up).
    Any other file (a cut, a smaller scale, a budget it fills) comes back as it is."""
    if coded.scale != 1 or data != coded.data or len(data) >= max_bytes:
        return data, coded
    p, engine = ladder.p, ladder.engine
    best = psnr(p.pixels, render(coded, data, engine))
    for s in enlargements(p):
        bigger = ladder.enlarged(s)
        try:
            cut = truncate(bigger.data, max_bytes=max_bytes)
        except ValueError:  # not even 1 token per tile of it fits
            break
        score = psnr(p.pixels, render(bigger, cut, engine))
        if score <= best:
            break
        data, coded, best = cut, bigger, score
        if len(bigger.data) > max_bytes:  # the budget cuts this scale short: a larger one would be cut shorter
            break
    return data, coded


def enlarged_reaching(ladder: ScaleLadder, target: tuple[str, float]) -> bytes | None:
    """The smallest cut reaching `target` of the first larger coding scale whose whole file does, or None."""
    for s in enlargements(ladder.p):
        bigger = ladder.enlarged(s)
        level = level_reaching(bigger, bigger.data, ladder.p.pixels, target, ladder.engine)
        if level is not None:
            return truncate(bigger.data, level=level)
    return None


# The share of a version-4 file's bytes its base thumbnail may take; the rest are the base model's tokens
# (0.9 tuned on held-out training photos against 0.6, 0.75 and 1.0, docs/training.md "The thumbnail's share";
# 0.95 since the picture takes the base's low band: better than 0.9 and 0.85 at 0.1-0.2 bpp on every metric,
# mostly level or better below, on training photos: docs/training.md "The base's low band").
BASE_SHARE = 0.95
# A cut of a version-4 file that keeps this many layers or fewer gives way to the thumbnail alone within the
# whole budget: one token per tile draws less than the thumbnail model's 0-token picture of a thumbnail with a
# tenth more bytes (on 15 held-out training photos whose cut kept one layer: DISTS lower on 12, LPIPS-Alex on
# 14, PSNR +0.09 dB; with 2-5 layers the cut keeps 0.6-1.9 dB more PSNR: docs/training.md, "One layer or the
# thumbnail alone").
ALONE_MAX_LAYERS = 1


def based_within(ladder: ScaleLadder, max_bytes: int) -> bytes | None:
    """A version-4 file within max_bytes: the best base thumbnail within BASE_SHARE of it, then the base
    model's tokens cut to the budget, or all of them where they leave bytes; where no thumbnail fits the
    share but one fits the whole budget, that thumbnail alone (on the 768x512 test photo at 140-151 bytes:
    15.05 dB against 13.6-13.7 for the tokens-only file). None where no base fits (or no base model).

    No further stage follows the base model's: where its whole file is under the budget (a large budget for the
    photo) its picture is already good (28.9-43.3 dB where measured), and the refinement model's stage at 4x after
    it decoded 0.7-3.7 dB worse in every case measured (11 of 11, held-out training photos at 0.15-1.0 bpp:
    docs/training.md, "No third stage after a thumbnail's tokens"), for 6-19 s more of encoding."""
    base = ladder.base_within(max_bytes)
    if base is None:  # none within the share: one within the whole budget still beats tokens alone
        return thumbnail_alone(ladder, max_bytes)
    whole = ladder.based(base)
    if len(whole.data) > max_bytes:
        try:
            cut = truncate(whole.data, max_bytes=max_bytes)
        except ValueError:  # the thumbnail's header leaves no room (not expected: the share left it some)
            return None
        layers = len(container.read(cut).layers)
        return cut if layers > ALONE_MAX_LAYERS else thumbnail_alone(ladder, max_bytes, base)
    return whole.data


def thumbnail_alone(ladder: ScaleLadder, max_bytes: int,
                    within_share: thumbnail.Base | None = None) -> bytes | None:
    """Where the tokens' share of a budget holds at most ALONE_MAX_LAYERS layers (a large image at the
    smallest budgets), or no thumbnail fits the share, the thumbnail takes the whole budget instead: the
    file is that thumbnail with no layer, drawn by the model trained for that (0 tokens: a learned
    enlargement of it); the one chosen within the share (`within_share`) where that file would not fit.
    None where neither fits."""
    for base in (ladder.base_within(max_bytes, share=1.0, alone=True), within_share):
        if base is not None:
            alone = container.write(container.Container(ladder.based_header(base, alone=True), []))
            if len(alone) <= max_bytes:
                return alone
    return None


def within(ladder: ScaleLadder, max_bytes: int) -> bytes:
    """The default file within max_bytes: a version-4 file (a base thumbnail, then tokens) where a base
    fits; else the full-size file's cut; a smaller scale's when that cannot fit; when the whole full-size
    file leaves bytes, the refinement stage's cut, or without a refinement model a larger scale's cut
    where it spends them better."""
    based = based_within(ladder, max_bytes)
    if based is not None:
        return based
    data, coded = first_within(ladder, max_bytes)
    if ladder.stage_model is not None:
        return refined_within(ladder, data, coded, max_bytes)
    return enlarged_within(ladder, data, coded, max_bytes)[0]


def best_refined_within(ladder: ScaleLadder, data: bytes, coded: Coded, max_bytes: int) -> tuple[bytes, Coded]:
    """`scale="psnr"`: of the larger scales' cut (enlarged_within) and the refinement stage's cut
    within max_bytes, the one of higher PSNR, and the coded file it is a cut of (the full-size one for
    the refinement stage's)."""
    data, coded = enlarged_within(ladder, data, coded, max_bytes)
    staged = refined_within(ladder, ladder.full.data, ladder.full, max_bytes)
    if staged == ladder.full.data or staged == data:
        return data, coded
    refiner = ladder.refined.engine
    engines = {refiner.entry.name: refiner, ladder.engine.entry.name: ladder.engine}
    score = [psnr(ladder.p.pixels, shown(d, ladder.engine.device, engines)) for d in (data, staged)]
    return (data, coded) if score[0] >= score[1] else (staged, ladder.full)
