"""Encode and decode whole images: the parts (imaging, engine, allocation, stream, rate control) in order.

The public API (odp.encode, odp.decode, ...) and the Pillow plugin call these with an
EncodeOptions; nothing here parses user input.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from ..formats import container
from ..formats.container import FormatError
from . import refinement, registry, stream
from .engine import Engine
from .errors import OdpWarning, OptionError
from .imaging import check_pixels, gray_of, prepare, resize, scaled_size
from .options import EncodeOptions
from .quality import MS_SSIM_MIN_SIDE
from .ratecontrol import (ScaleLadder, best_refined_within, best_within, encode_at, enlarged_reaching, least_bytes,
                          level_reaching, refined_reaching, refined_within, scales_for, within)


def engine_for(options: EncodeOptions, model=None, progress=None) -> Engine:
    """The Engine of `model` (a registry Entry or a weights.Model; default: the default model)."""
    return Engine(model or registry.find(), options.device, options.batch, progress)


def encode(im: Image.Image, options: EncodeOptions = EncodeOptions(), model=None,
           engine: Engine | None = None, progress=None) -> bytes:
    """Encode a Pillow image to .odp bytes as `options` say (see EncodeOptions). Images over the pixel
    limit are refused before their pixels are decoded. `progress`: see Engine."""
    check(im, options, engine.entry if engine else getattr(model, "entry", model) if model else registry.find())
    engine = engine or engine_for(options, model, progress)
    return _encode_prepared(prepare(im, options.metadata), options, engine)


def check(im: Image.Image, options: EncodeOptions, entry) -> None:
    """Refuse, before any work, an image or goal that cannot be encoded (pixels, budget, MS-SSIM size)."""
    check_pixels(im.width, im.height, options.max_pixels)
    if not isinstance(options.scale, str) and options.scale < 1:  # coded larger: the file holds more pixels
        check_pixels(*scaled_size(im.width, im.height, options.scale), options.max_pixels)
    check_budget(im.width, im.height, options, entry)
    target = options.target
    if target is not None and target[0] == "ms-ssim" and min(im.height, im.width) < MS_SSIM_MIN_SIDE:
        raise OptionError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} pixels a side")


def _encode_prepared(p, options: EncodeOptions, engine: Engine, full_tokens: np.ndarray | None = None) -> bytes:
    """The file of prepared pixels; `full_tokens`: their tokens at full size, if already made."""
    height, width = p.pixels.shape[:2]
    target, scale, tokens = options.target, options.scale, options.tokens
    if tokens is not None and tokens > engine.entry.tokens:
        warnings.warn(f"the model makes {engine.entry.tokens} tokens per tile: keeping all of them", OdpWarning)
    max_bytes = options.budget(width, height)
    full_size = isinstance(scale, str) or scale == 1  # the refinement stage follows a full-size first stage
    refine = options.refine and full_size and tokens is None
    ladder = ScaleLadder(p, engine, options.adaptive, full_tokens, refine, options.max_pixels,
                         base=refine and options.base and scale == "auto")
    if max_bytes is None and target is None and tokens is None and scale == "auto":
        ladder.warm_refined()  # the default: the whole file of both stages
    if not isinstance(scale, str):
        codeds = [ladder.full if scale == 1 else encode_at(p, scale, engine, options.adaptive)]
    else:
        codeds = list(ladder) if scale == "psnr" and (max_bytes is not None or target is not None) else [ladder.full]
    coded = codeds[0]
    data = coded.data
    if tokens is not None:
        data = stream.truncate(data, tokens=tokens)
    if max_bytes is None and target is None and ladder.refined is not None:
        data = ladder.refined.data  # every token of both stages: the whole range in one file
    if max_bytes is not None:
        if options.quality is not None:  # a quality never gives less than 1 token per tile of the smallest file
            max_bytes = max(max_bytes, min(len(stream.truncate(c.data, tokens=1)) for c in codeds))
        if scale == "auto":  # smaller sizes are encoded only if full size cannot fit, larger if it leaves bytes
            data = within(ladder, max_bytes)
        else:
            data, coded = best_within(codeds, max_bytes, p.pixels, engine)
            if scale == "psnr":
                data = best_refined_within(ladder, data, coded, max_bytes)[0]
            else:
                data = refined_within(ladder, data, coded, max_bytes)
    if target is not None:
        reached = []
        for c in codeds:
            level = level_reaching(c, c.data, p.pixels, target, engine)
            if level is not None:
                reached.append(stream.truncate(c.data, level=level))
        if not reached:  # out of reach of the first stage: the refinement stage's cuts
            staged = refined_reaching(ladder, target)
            reached += [staged] if staged is not None else []
        if not reached and isinstance(scale, str):  # out of reach at full size: try coding it larger
            larger = enlarged_reaching(ladder, target)
            reached += [larger] if larger is not None else []
        if not reached:
            warnings.warn(f"{target[0]} {target[1]} is out of reach: keeping every token", OdpWarning)
            every = ladder.extended or ladder.refined
            data = every.data if every is not None else data
        data = min(reached, key=len) if reached else data
    return data


def check_budget(width: int, height: int, options: EncodeOptions, entry) -> None:
    """Refuse a byte budget (bytes or bpp) below the smallest file this image can have, before any work.
    A quality is never refused: it keeps at least 1 token per tile of the smallest file."""
    budget = options.budget(width, height)
    if budget is None or options.quality is not None:
        return
    scales = scales_for(width, height, entry.tile) if isinstance(options.scale, str) else [options.scale]
    least = least_bytes(width, height, entry, scales)
    if budget < least:
        raise OptionError(f"{budget} bytes is below the smallest ODP file of a {width}x{height} image "
                          f"({least} bytes)", option="bytes" if options.bytes is not None else "bpp")


def encode_many(ims: list[Image.Image], options: EncodeOptions = EncodeOptions(),
                model=None) -> list[bytes]:
    """Encode several Pillow images, each as encode() would, their full-size tiles batched together
    through the network (the throughput path: on a GPU, small images no longer each pay for a mostly
    empty batch). Every image is checked before any work. Allocation, cuts and smaller coding scales
    stay per image."""
    if not ims:
        return []
    for im in ims:
        check(im, options, getattr(model, "entry", model) if model else registry.find())
    engine = engine_for(options, model)
    prepared = [prepare(im, options.metadata) for im in ims]
    full = None
    if isinstance(options.scale, str) or options.scale == 1:  # every such encode starts at full size
        full = engine.encode_many([p.pixels for p in prepared])
    return [_encode_prepared(p, options, engine, None if full is None else full[i])
            for i, p in enumerate(prepared)]


GROUP_PIXELS = 1_500_000  # encode_groups: images encoded together up to about this many pixels


def encode_groups(items, options: EncodeOptions = EncodeOptions()):
    """(key, image) pairs, read lazily, in groups of about GROUP_PIXELS, each group through one
    encode_many: yields each group as a list of (key, image, file). The file is None where the group's
    batch failed or warned: the caller encodes that image alone, so the error or warning names it.
    With a quality target every image is its own group (its search is per image)."""
    group: list = []
    pixels = 0
    for key, im in items:
        group.append((key, im))
        pixels += im.width * im.height
        if pixels >= GROUP_PIXELS or options.target is not None:
            yield _encoded_together(group, options)
            group, pixels = [], 0
    if group:
        yield _encoded_together(group, options)


def _encoded_together(group: list, options: EncodeOptions) -> list:
    files = None
    if len(group) > 1:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                files = encode_many([im for _, im in group], options)
            files = None if caught else files
        except Exception:  # noqa: BLE001  (the caller finds it again, per image, by encoding it alone)
            files = None
    return [(key, im, None if files is None else files[i]) for i, (key, im) in enumerate(group)]


def decode_pixels(data: bytes, tokens: int | None = None, device: str = "auto", batch: int | None = None,
                  max_pixels: int | None = container.FROM_ENV, progress=None,
                  strict: bool = False) -> tuple[np.ndarray, container.Header]:
    """.odp bytes -> ((H, W, 3) uint8 at the display size, header), using at most `tokens` per tile on average.
    A file cut short or with a damaged layer decodes from the layers before (with an OdpWarning), unless
    `strict`: then it is a FormatError."""
    c = container.read(data, max_pixels)
    # a file with refinement stages (some may not have arrived) or a base: refinement.shown draws it
    staged = bool(c.stages or c.header.stages_after or c.header.base)
    if staged and tokens is not None:  # the first stage's tokens per tile: its cut
        data = stream.truncate(data, tokens=tokens)
        c = container.read(data, max_pixels)
    if staged:
        return refinement.shown(data, device, None, batch, progress, max_pixels, strict), c.header
    c, entry, toks, counts = stream.read_tokens(data, tokens, max_pixels, intact=strict)
    if strict and not c.complete:
        raise FormatError(f"file is cut short: only {len(c.layers)} layers are whole")
    h = c.header
    engine = Engine(entry, device, batch, progress)
    return resize(engine.decode(toks, h.width, h.height, counts), h.display_size), h


def decode(data: bytes, tokens: int | None = None, device: str = "auto", batch: int | None = None,
           max_pixels: int | None = container.FROM_ENV, progress=None, strict: bool = False) -> Image.Image:
    """.odp bytes -> Pillow image (RGB, or L for a greyscale file), using at most `tokens` tokens per tile
    on average; refuses images over `max_pixels` (default $ODP_MAX_PIXELS or container.DEFAULT_MAX_PIXELS)
    before allocating them."""
    pixels, h = decode_pixels(data, tokens, device, batch, max_pixels, progress, strict)
    im = Image.fromarray(gray_of(pixels), "L") if h.gray else Image.fromarray(pixels, "RGB")
    if h.icc:
        im.info["icc_profile"] = h.icc
    if h.exif:
        im.info["exif"] = h.exif
    return im
