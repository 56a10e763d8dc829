"""Refinement stages: a better picture than the first stage's, from a conditioned model's tokens.

Encoder and decoder take the same steps, so the stage's network sees the same picture so far on
both sides: the picture the stages before it show (at the display size), enlarged to the stage's
coded size, a whole multiple of it, by imaging.enlarge_bicubic (as the model was trained). The
encoder gives the network the image enlarged the same way with it; the decoder gives it the stage's
tokens with it, and reduces what it decodes to the display size (Lanczos), as a file coded larger is.
"""
from __future__ import annotations

import numpy as np

from ..formats import container
from ..formats.container import FROM_ENV, FormatError
from . import registry, stream, thumbnail
from .allocation import allocation
from .engine import Engine
from .imaging import enlarge_bicubic, gray_of, resize
from .stream import StageTokens


def stage_scale(display: tuple[int, int], coded: tuple[int, int]) -> int:
    """How many times each side of the display size a stage is coded at (FormatError unless whole)."""
    (w, h), (cw, ch) = display, coded
    if cw % w or ch % h or cw // w != ch // h or cw // w < 1:
        raise FormatError(f"a refinement stage coded at {cw}x{ch} is not a whole multiple of the picture "
                          f"before it ({w}x{h})")
    return cw // w


def drawn_scale(engine: Engine, scale: int) -> int:
    """How many times each side of the display size the stage's decoder draws, for a stage coded at `scale`:
    `scale` itself, or less for a model drawing smaller than it codes (`out_shrink`; 1: the display size)."""
    shrink = engine.entry.out_shrink
    if scale % shrink:
        raise FormatError(f"model '{engine.entry.name}' draws {shrink} times smaller than it codes: it cannot "
                          f"draw a stage coded at {scale}x")
    return scale // shrink


def encode_stage(engine: Engine, pixels: np.ndarray, shown: np.ndarray, scale: int) -> np.ndarray:
    """The stage's tokens (tiles, K) of the image `pixels` (display size, uint8) coded at `scale` times
    each side, given `shown`, the picture the stages before show (same size)."""
    return engine.encode(enlarge_bicubic(pixels, scale), cond=enlarge_bicubic(shown, scale))


def decode_stage(engine: Engine, stage: StageTokens, shown: np.ndarray) -> np.ndarray:
    """The picture after `stage` (display size, uint8), from its tokens and `shown`, the picture the
    stages before it show."""
    h = stage.container.header
    scale = stage_scale((shown.shape[1], shown.shape[0]), (h.width, h.height))
    drawn = drawn_scale(engine, scale)
    pic = engine.decode(stage.tokens, h.width, h.height, stage.counts,
                        cond=enlarge_bicubic(shown, drawn) if drawn > 1 else shown)
    if drawn > 1:
        pic = resize(pic, (shown.shape[1], shown.shape[0]))
    if h.base_low_band:  # a version-4 first stage (`shown` is its base's picture) taking part of the base's low band
        pic = thumbnail.with_low_band(pic, shown, h.base_low_band)
    return pic


# Coded pixels up to which the encoder adds a refinement stage (a 16-MP photo at 2x): beyond, the
# stage's tiles would multiply the encoding time and memory of a large photo; its file stays single-stage.
REFINE_MAX_PIXELS = 64_000_000
# A budget or target past the refinement stage's whole file (about 0.2 bpp) is spent on a further stage:
# the refinement model again, at this many times each side of the picture, given the refined picture.
# At 4x it adds more per byte than at 2x or 3x (held-out training photos, docs/model.md).
EXTEND_SCALE = 4


def shown(data: bytes, device: str = "cpu", engines: dict | None = None, batch: int | None = None,
          progress=None, max_pixels: int | None = FROM_ENV, strict: bool = False) -> np.ndarray:
    """The picture a file shows (display size, uint8 RGB; a greyscale file's channel repeated): its first
    stage, then each refinement stage that arrived. `engines`: Engines by model name, reused and filled.
    A file cut short decodes from its whole layers (stream.read_stages warns), unless `strict`."""
    engines = {} if engines is None else engines

    def engine_of(entry) -> Engine:
        if entry.name not in engines:
            engines[entry.name] = Engine(entry, device, batch, progress)
        return engines[entry.name]

    c = container.read(data, max_pixels)
    models = []
    for i, stage in enumerate([c] + c.stages):  # before any decoding
        model = registry.find_by_hash(stage.header.model_id)
        models.append(model)
        if bool(model.config.get("conditioned")) != bool(i or c.header.base):
            raise FormatError(f"stage {i + 1} names model '{model.name}', which is "
                              f"{'a' if model.config.get('conditioned') else 'no'} refinement model")
    for model in models:  # their networks open while the tokens are read
        engine_of(model).warm("decoder")
    stages = stream.read_stages(data, max_pixels, intact=strict)
    first = stages[0]
    if strict and not first.container.complete:
        raise FormatError("file is cut short: not every layer is whole")
    h = first.container.header
    if h.base:  # version 4: the first stage refines the base thumbnail
        pic = decode_stage(engine_of(first.model), first, thumbnail.picture(h))
    else:
        pic = engine_of(first.model).picture(first.tokens, h, first.container.level)
    for stage in stages[1:]:
        pic = decode_stage(engine_of(stage.model), stage, pic)
    return pic


def refine(data: bytes, pixels: np.ndarray, engine: Engine, scale: int | None = None, so_far: np.ndarray | None = None,
           level: int | None = None, entropy=None, adaptive: bool = False) -> tuple[bytes, np.ndarray]:
    """(whole file, stage tokens): the file of the image `pixels` (display size) with one more
    refinement stage: `engine`'s conditioned model codes the image at `scale` (default: the model's)
    times each side, given the picture the file shows (`so_far`, if known; all of it, or its first
    `level` per tile as stream.add_stage says). `adaptive`: its tiles get tokens by need, measured by
    decoding each at a few counts (allocation.py); else all alike, the default: on the 768x512 test
    photo both give the same PSNR at every cut within 0.05 dB (step-1000 snapshot), and measuring
    costs six decodes of every tile."""
    scale = scale or engine.entry.scale
    if so_far is None:
        so_far = shown(data, engine.device, {engine.entry.name: engine})
    h, w = so_far.shape[:2]
    big, cond = enlarge_bicubic(pixels, scale), enlarge_bicubic(so_far, scale)
    tokens = engine.encode(big, cond=cond)
    entropy = entropy or engine.entry.best_entropy
    weights, caps = b"", b""
    if adaptive:  # errors measured at the size its decoder draws
        d = drawn_scale(engine, scale)
        drawn = ((big, cond) if d == scale else (pixels, so_far) if d == 1
                 else (enlarge_bicubic(pixels, d), enlarge_bicubic(so_far, d)))
        weights, caps = allocation(tokens, drawn[0], engine, entropy, measure=True, cond=drawn[1])
    return stream.add_stage(data, tokens, w * scale, h * scale, engine.entry, weights, caps, level=level,
                            entropy=entropy), tokens


def stage_picture(engine: Engine, tokens: np.ndarray, header, level: int, so_far: np.ndarray) -> np.ndarray:
    """What the decoder shows of a stage's `tokens` cut at `level`, given the picture before it (the
    encoder's view: no entropy decoding)."""
    stage = StageTokens(container.Container(header, []), engine.entry, tokens, np.array(header.counts(level)))
    pic = decode_stage(engine, stage, so_far)
    return np.repeat(gray_of(pic)[..., None], 3, axis=2) if header.gray else pic
