"""Tokens <-> layered .odp bytes: packing, reading, truncating and verifying files.

No torch and no network: everything here is the container (formats/), the entropy coder
(entropy/) and the model's identity and tables (registry.Entry). This is why `odp info`,
`odp truncate` and `odp info --verify` start fast.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from ..entropy import coder
from ..formats import container
from ..formats.container import Container, FormatError, Header, Layer
from . import registry, thumbnail
from .errors import ModelNotFound, OdpWarning
from .registry import Entry

# Levels at which new files end a layer: the points where a file can be cut without re-coding
# (each layer costs about 7 bytes of header and coder flush). `truncate` reaches any level in between.
LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
          4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)


def layer_levels(h: Header, top: int) -> list[int]:
    """Levels ending the layers of a new file up to `top`: LEVELS, skipping any that add no token."""
    out, seen = [], 0
    for level in [lv for lv in LEVELS if lv < top] + [top]:
        n = sum(h.counts(level))
        if n > seen:
            out.append(level)
            seen = n
    return out


def pack(tokens: np.ndarray, width: int, height: int, model: Entry, icc: bytes = b"", exif: bytes = b"",
         weights: bytes = b"", level: int | None = None, entropy=None, caps: bytes = b"",
         display: tuple[int, int] = (0, 0), gray: bool = False, base: "thumbnail.Base | None" = None) -> bytes:
    """Tokens (tiles, >= what `level` keeps) -> .odp bytes, layered at layer_levels (all tokens by default);
    `weights`/`caps`: the allocation (allocation.py); `display`: the size to enlarge the coded
    width x height to when decoding (default: none); `gray`: decode to one channel; `base`: the
    thumbnail a version-4 file's tokens refine (`model` is then its base model), with its low band's weight."""
    entropy = entropy or model.best_entropy
    based = {} if base is None else {"base_codec": thumbnail.CODE[base.codec], "base_shrink": base.shrink,
                                     "base": base.data, "base_low_band": base.low_band}
    h = Header(width, height, model.tile, model.tokens, model.sha256[:container.MODEL_ID_BYTES],
               entropy.id, weights, caps, icc, exif, *display, gray=gray, **based)
    levels = layer_levels(h, level or h.full_level)
    return container.write(Container(without_idle_caps(h, levels[-1]), build_layers(tokens, h, levels, entropy)))


def build_layers(tokens: np.ndarray, h: Header, levels: list[int], entropy, start: int = 0) -> list[Layer]:
    layers, before = [], np.array(h.counts(start))
    for level in levels:
        after = np.array(h.counts(level))
        data, check = coder.encode_layer(tokens, before, after, entropy)
        layers.append(Layer(level, data, check))
        before = after
    return layers


def without_idle_caps(h: Header, level: int) -> Header:
    """h without its token caps when no tile reaches its cap by `level`: a file cut there counts the
    same tokens without them, and small files should not spend a byte per tile on them."""
    bare = replace(h, caps=b"")
    return bare if h.caps and bare.counts(level) == h.counts(level) else h


def token_bits(toks: np.ndarray, entropy) -> np.ndarray:
    """(tiles, K) ideal code length in bits of each token under `entropy` (its context = earlier tokens)."""
    t_idx, pos = np.divmod(np.arange(toks.size), toks.shape[1])
    bits = np.empty(toks.size)
    for i in range(0, toks.size, coder.BLOCK):
        t, p = t_idx[i:i + coder.BLOCK], pos[i:i + coder.BLOCK]
        f = coder.tables(entropy, toks, t, p)                        # (n, digits, radix)
        d = coder.digits_of(toks[t, p], entropy)
        bits[i:i + coder.BLOCK] = (24 - np.log2(np.take_along_axis(f, d[:, :, None], 2)[:, :, 0])).sum(1)
    return bits.reshape(toks.shape)


def min_first_layer_bytes(tiles: int, entropy) -> int:
    """Fewest bytes a valid first layer for `tiles` tiles can have.

    The first layer codes every tile's first token, none of which is likelier than the model's
    largest probability at position 0, so the stream holds at least that many bits per tile (less
    2% and 8 bytes of slack for the coder's quantiser). This ties a header's tile count to the
    bytes actually sent: a 100-byte file cannot make the decoder run the network on thousands of tiles.
    """
    return max(0, int(entropy.first_token_bits() * tiles * 0.98 / 8) - 8)


def single_stage(c: Container) -> Container:
    """`c`, unless it announces refinement stages (format version 3, whether or not they arrived): their
    tokens are read stage by stage (read_stages, refinement.shown), so a one-line FormatError."""
    if c.header.stages_after:
        raise FormatError(f"this file has {c.header.stages_after} refinement stage(s) after the first (format "
                          f"version {container.STAGED_VERSION}): its tokens are read stage by stage")
    return c


def open_container(data: bytes, max_pixels: int | None = container.FROM_ENV,
                   first_stage: bool = False) -> tuple[Container, Entry, object]:
    """Parse bytes and find the model and entropy model they need; warn when the payload is cut short.
    A file with refinement stages is refused unless only its `first_stage` is asked about."""
    c = container.read(data, max_pixels)
    if not first_stage:
        single_stage(c)
    h = c.header
    model = registry.find_by_hash(h.model_id, h.model_name)
    if model.tile != h.tile or model.tokens != h.tokens:
        raise FormatError(f"file header does not match model '{model.name}' (tile layout differs)")
    try:
        entropy = model.entropy(h.entropy_model)
    except ModelNotFound as e:
        raise FormatError(str(e)) from None
    least = min_first_layer_bytes(h.tiles, entropy)
    if c.layers and len(c.layers[0].data) < least:
        raise FormatError(f"first layer of {len(c.layers[0].data)} bytes is too short for {h.tiles} tiles "
                          f"(at least {least}): the file is corrupt")
    if not c.complete:
        if not c.layers and not h.base:
            raise FormatError("file is cut short before its first complete layer of tokens")
        if c.stages and first_stage:  # cut inside a refinement stage: say what arrived of each
            stages = "".join(f", refinement stage {i}: {len(x.layers)} layers ({x.mean_tokens:.1f} tokens per tile)"
                             for i, x in enumerate(c.stages, 2))
            warnings.warn(f"file is cut short: decoding the layers that arrived whole (first stage: "
                          f"{len(c.layers)} layers{stages})", OdpWarning)
        elif not c.layers:
            warnings.warn("file is cut short: decoding its base thumbnail alone (no layer of tokens arrived "
                          "whole)", OdpWarning)
        else:
            warnings.warn(f"file is cut short: decoding the {len(c.layers)} layers that arrived whole "
                          f"({c.mean_tokens:.1f} tokens per tile on average)", OdpWarning)
    return c, model, entropy


def level_for_tokens(h: Header, tokens: int, top: int) -> int:
    """The highest level up to `top` keeping at most `tokens` per tile on average (at least level 1)."""
    lo, hi = 1, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(h.counts(mid)) <= tokens * h.tiles:
            lo = mid
        else:
            hi = mid - 1
    return lo


def read_tokens(data: bytes, tokens: int | None = None, max_pixels: int | None = container.FROM_ENV,
                strict: bool = False, level: int | None = None,
                intact: bool = False) -> tuple[Container, Entry, np.ndarray, np.ndarray]:
    """Entropy-decode a file -> (container, model entry, tokens (tiles, K), counts per tile); no network runs.
    With `tokens`, decode only up to the level keeping at most that many per tile on average; with
    `level`, up to that level. A damaged layer (one that does not decode to tokens passing its check)
    ends the file there, as a cut would: the layers before it are kept, the container is marked
    incomplete and an OdpWarning says what was lost; the first layer damaged, or any with `intact`,
    raises FormatError instead. `strict` also refuses a layer that is not exactly the coding of its tokens
    (see verify)."""
    c, model, entropy = open_container(data, max_pixels)
    h = c.header
    if level is None:
        level = c.level if tokens is None else level_for_tokens(h, max(1, tokens), c.level)
    toks, counts = _decode_layers(c, entropy, level, strict, intact, "payload layer")
    return c, model, toks, counts


def _decode_layers(c: Container, entropy, level: int, strict: bool, intact: bool,
                   what: str) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of one stage's layers up to `level` -> (tokens (tiles, K), counts per tile); a damaged
    layer past the first cuts `c` there (see read_tokens)."""
    h = c.header
    level = min(c.level, level)
    toks = np.zeros((h.tiles, h.tokens), np.int32)
    before = np.array(h.counts(0))
    for i, layer in enumerate(c.layers):  # a layer that goes past `level` is decoded whole, then cut
        after = np.array(h.counts(layer.level))
        try:
            coder.decode_layer(layer.data, toks, before, after, entropy, layer.check, strict)
        except coder.EntropyError as e:
            if i == 0 or intact:
                raise FormatError(f"{what} {i} does not decode (the file is corrupt): {e}") from None
            n = len(c.layers)
            tile, pos, _ = coder.layer_order(before, after)
            toks[tile, pos] = 0  # what the damaged layer decoded is not kept
            c.layers, c.complete = c.layers[:i], False
            level = min(level, c.level)
            warnings.warn(f"{what} {i} of {n} is damaged: decoding the {i} layers before it "
                          f"({c.mean_tokens:.1f} tokens per tile on average)", OdpWarning)
            break
        before = after
        if layer.level >= level:
            break
    return toks, np.array(h.counts(level))


@dataclass
class StageTokens:
    """One stage of a file as decoded tokens: the first stage, or a refinement stage after it."""

    container: Container     # the stage's header (its coded size, model, allocation) and its whole layers
    model: Entry
    tokens: np.ndarray       # (tiles, K) token ids; positions past `counts` are 0
    counts: np.ndarray       # tokens each tile has


def _stage_model(h: Header) -> tuple[Entry, object]:
    """The installed model and entropy model a refinement stage's header names (FormatError if none)."""
    model = registry.find_by_hash(h.model_id)
    if model.tile != h.tile or model.tokens != h.tokens:
        raise FormatError(f"stage header does not match model '{model.name}' (tile layout differs)")
    try:
        return model, model.entropy(h.entropy_model)
    except ModelNotFound as e:
        raise FormatError(str(e)) from None


def read_stages(data: bytes, max_pixels: int | None = container.FROM_ENV, strict: bool = False,
                intact: bool = False) -> list[StageTokens]:
    """Entropy-decode every stage that arrived: the first stage whole, then each refinement stage up to
    its last whole layer (a file cut inside a stage ends there). A damaged layer ends the file as in
    read_tokens; the stages after it are dropped. No network runs."""
    c, model, entropy = open_container(data, max_pixels, first_stage=True)
    later, c.stages = c.stages, []
    n_first = len(c.layers)
    out = [StageTokens(c, model, *_decode_layers(c, entropy, c.level, strict, intact, "payload layer"))]
    if len(c.layers) < n_first:  # damaged: a refinement needs the whole picture before it
        return out
    for i, stage in enumerate(later, 1):
        m, e = _stage_model(stage.header)
        least = min_first_layer_bytes(stage.header.tiles, e)
        if len(stage.layers[0].data) < least:
            raise FormatError(f"stage {i}'s first layer of {len(stage.layers[0].data)} bytes is too short for "
                              f"{stage.header.tiles} tiles (at least {least}): the file is corrupt")
        n = len(stage.layers)
        out.append(StageTokens(stage, m, *_decode_layers(stage, e, stage.level, strict, intact, f"stage {i} layer")))
        if len(stage.layers) < n:
            c.complete = False
            break
    return out


def verify(data: bytes, max_pixels: int | None = container.FROM_ENV) -> None:
    """FormatError unless the file is whole: header CRC good, every layer of every stage present,
    decoding to tokens that pass their checks, and exactly the range coding of those tokens. No network
    runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OdpWarning)
        c = read_stages(data, max_pixels=max_pixels, strict=True, intact=True)[0].container
    if c.header.base:
        thumbnail.picture(c.header)
    if not c.complete:
        raise FormatError(f"file is cut short: only {len(c.layers) + sum(len(x.layers) for x in c.stages)} "
                          "layers are whole")


def add_stage(data: bytes, tokens: np.ndarray, width: int, height: int, model: Entry, weights: bytes = b"",
              caps: bytes = b"", level: int | None = None, entropy=None) -> bytes:
    """A whole version-2 or -3 file with a refinement stage appended (format version 3): `tokens` of
    the stage's tiles at its coded size width x height (the image enlarged), layered at layer_levels,
    coded with `entropy` (default: the model's best). A cut anywhere in it still decodes."""
    c = container.read(data)
    if c.header.version == 1 or not c.complete:
        raise ValueError("a refinement stage follows a whole file of format version 2 or 3")
    if len(c.stages) + 2 > container.MAX_STAGES:
        raise ValueError(f"a file holds at most {container.MAX_STAGES} stages")
    entropy = entropy or model.best_entropy
    first = c.header
    h = Header(width, height, model.tile, model.tokens, model.sha256[:container.MODEL_ID_BYTES], entropy.id,
               weights, caps, display_width=first.display_size[0], display_height=first.display_size[1],
               version=container.STAGED_VERSION, gray=first.gray, kind=1)
    levels = layer_levels(h, level or h.full_level)
    c.stages.append(Container(without_idle_caps(h, levels[-1]), build_layers(tokens, h, levels, entropy)))
    return container.write(c)


def cut_points(data: bytes) -> list[tuple[int, float]]:
    """(file bytes, mean tokens per tile) of the file `truncate` makes at the end of each whole layer,
    smallest first: the cuts that keep layers as they are, computed from the container alone (nothing
    is decoded). A version-1 file's cuts are those of its version-2 conversion. Past the first stage,
    the tokens are those of the stage the cut falls in, per tile of that stage."""
    c = container.read(data)
    h = replace(c.header, model_id=c.header.model_id[:container.MODEL_ID_BYTES], model_name="",
                version=container.VERSION)
    layers = [replace(x, check=x.check or 0) for x in c.layers]  # a v1 chunk gains a 2-byte check
    out = [(len(container.write(Container(without_idle_caps(h, x.level), layers[:i + 1]))),
            sum(h.counts(x.level)) / h.tiles) for i, x in enumerate(layers)]
    if h.base:  # the base thumbnail alone
        out.insert(0, (len(container.write(Container(without_idle_caps(h, 0), []))), 0.0))
    for j, stage in enumerate(c.stages):
        sh = stage.header
        for i, x in enumerate(stage.layers):
            cut = Container(h, layers, stages=c.stages[:j] + [Container(without_idle_caps(sh, x.level),
                                                                         stage.layers[:i + 1])])
            out.append((len(container.write(cut)), sum(sh.counts(x.level)) / sh.tiles))
    return out


def truncate(data: bytes, tokens: int | None = None, max_bytes: int | None = None, level: int | None = None) -> bytes:
    """A smaller valid file: at `tokens` per tile (on average, for an adaptive file), or the largest
    that fits `max_bytes`. Whole layers are kept byte for byte; only a partial last layer is re-coded,
    by the entropy coder alone (no neural network runs). A version-1 file comes out as version 2.
    Only the layers the result can hold are entropy-decoded (the context model is slow).
    Of a file with refinement stages: `tokens` and `level` cut its first stage (the stages after it
    are dropped); `max_bytes` keeps the first stage whole where the budget holds it, and then as many
    of the refinement stages' layers as fit."""
    c = container.read(data)
    if c.stages:
        return _truncate_staged(data, c, tokens, max_bytes, level)
    least = 0 if c.header.base else 1  # a file with a base may keep no token: its thumbnail alone
    if level is not None:
        need = max(least, min(level, c.level))
    elif tokens is not None:
        if tokens < 1:
            raise ValueError(f"tokens must be at least 1, not {tokens}")
        need = level_for_tokens(c.header, tokens, c.level)
    elif max_bytes is not None:  # no level past the first layer whose payload alone ends beyond max_bytes fits
        ends = np.cumsum([len(x.data) for x in c.layers])
        over = [x.level for x, end in zip(c.layers, ends) if end > max_bytes]
        need = over[0] if over else c.level
    else:
        need = c.level
    c, model, toks, _ = read_tokens(data, level=need)
    need = min(need, c.level)  # a damaged layer ends the file: nothing past it is kept
    h = replace(c.header, model_id=c.header.model_id[:container.MODEL_ID_BYTES], model_name="",
                version=container.VERSION)
    entropy = model.entropy(h.entropy_model)
    if c.header.version == 1:  # v1 chunks are v2 layers without their token checks: add them
        before, layers = np.array(h.counts(0)), []
        for layer in [x for x in c.layers if x.level <= need]:
            after = np.array(h.counts(layer.level))
            tile, pos, _ = coder.layer_order(before, after)
            layers.append(Layer(layer.level, layer.data, coder.token_check(toks[tile, pos])))
            before = after
    else:
        layers = [x for x in c.layers if x.level <= need]

    def at_level(level: int) -> bytes:
        whole = [x for x in layers if x.level <= level]
        start = whole[-1].level if whole else 0
        adds = sum(h.counts(level)) > sum(h.counts(start))  # a level between two weights' steps may add none
        extra = build_layers(toks, h, [level], entropy, start) if adds else []
        return container.write(Container(without_idle_caps(h, level), whole + extra))

    if max_bytes is None:
        return at_level(need)
    lo = highest_fitting(layers, need, lambda lv: len(at_level(lv)), max_bytes, least=least)
    if lo is None:
        if least == 0:
            raise ValueError(f"{max_bytes} bytes cannot hold this file's base thumbnail (that needs {len(at_level(0))})")
        raise ValueError(f"{max_bytes} bytes cannot hold even 1 token per tile (that needs {len(at_level(1))})")
    return at_level(lo)


def highest_fitting(layers: list[Layer], top: int, size_at, max_bytes: int, least: int) -> int | None:
    """The highest level from `least` to `top` whose file (size_at(level) bytes, growing with the level)
    fits max_bytes; None when not even `least` fits. The ends of whole layers are tried first (cuts,
    nothing re-coded), then a binary search up to the next layer's level (a re-coded partial layer)."""
    fit = [x.level for x in layers if x.level <= top and size_at(x.level) <= max_bytes]
    if fit:
        lo = fit[-1]
    elif size_at(least) <= max_bytes:
        lo = least
    else:
        return None
    hi = min([x.level for x in layers if x.level > lo] + [top])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size_at(mid) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _truncate_staged(data: bytes, c: Container, tokens: int | None, max_bytes: int | None,
                     level: int | None, last_tokens: np.ndarray | None = None) -> bytes:
    """truncate() of a file with refinement stages (see there). The stages that fit whole are kept byte
    for byte without decoding; only the one the budget cuts is entropy-decoded, up to the layer it
    needs (`last_tokens`: the last stage's tokens, when the caller holds them)."""
    first = Container(c.header, c.layers, declared_level=c.declared_level)
    alone = container.write(first)  # the first stage as a version-2 file of its own
    if tokens is not None or level is not None or (max_bytes is not None and max_bytes < len(alone)):
        return truncate(alone, tokens=tokens, max_bytes=max_bytes, level=level)
    if max_bytes is None or len(data) <= max_bytes:
        return container.write(c)
    kept: list[Container] = []
    for i, stage in enumerate(c.stages, 1):
        model, entropy = _stage_model(stage.header)
        at = StageTokens(stage, model, None, None)  # whole layers' ends need no tokens
        top = stage.level
        if len(_with_stage_at(c, kept, at, top)) <= max_bytes:
            kept.append(Container(without_idle_caps(stage.header, top), stage.layers))
            continue
        toks = last_tokens if last_tokens is not None and i == len(c.stages) else None
        decoded = stage.level if toks is not None else 0
        at = StageTokens(stage, model, toks, None)

        def size_at(level: int) -> float:
            """Bytes of the file with this stage cut at `level`; its tokens are decoded the first time a
            partial layer is asked for (whole layers' ends need none)."""
            nonlocal at, decoded
            if level > decoded and all(x.level != level for x in stage.layers):
                toks = _decode_layers(stage, entropy, level, False, False, f"stage {i + 1} layer")[0]
                decoded = min([x.level for x in stage.layers if x.level >= level] + [stage.level])
                at = StageTokens(stage, model, toks, None)
            if level > stage.level:  # a damaged layer ends the stage
                return float("inf")
            return len(_with_stage_at(c, kept, at, level))

        lo = highest_fitting(stage.layers, top, size_at, max_bytes, least=0)
        return _with_stage_at(c, kept, at, lo)
    return container.write(Container(c.header, c.layers, stages=kept))


def stage_cut_within(data: bytes, max_bytes: int, last_tokens: np.ndarray) -> bytes:
    """truncate(data, max_bytes=) of a whole file with refinement stages whose last stage's tokens the
    encoder holds: nothing is entropy-decoded."""
    return _truncate_staged(data, container.read(data), None, max_bytes, None, last_tokens)


def cut_last_stage(data: bytes, level: int, tokens: np.ndarray | None = None) -> bytes:
    """A file with refinement stages, its last stage cut at `level` (0: left out); no network runs.
    `tokens`: that stage's tokens, when the caller holds them (else entropy-decoded up to `level`)."""
    c = container.read(data)
    if not c.stages:
        raise ValueError("this file has no refinement stage to cut")
    last = c.stages[-1]
    model, entropy = _stage_model(last.header)
    level = max(0, min(level, last.level))
    if tokens is None:
        tokens = _decode_layers(last, entropy, level, False, False, f"stage {len(c.stages) + 1} layer")[0]
    return _with_stage_at(c, c.stages[:-1], StageTokens(last, model, tokens, None), min(level, last.level))


def _with_stage_at(c: Container, kept: list[Container], st: StageTokens, level: int) -> bytes:
    """The file of `c`'s first stage, the stages `kept`, then `st` cut at `level` (0: without it):
    its whole layers byte for byte, a partial last one re-coded."""
    if level == 0:
        return container.write(Container(c.header, c.layers, stages=kept))
    h = st.container.header
    whole = [x for x in st.container.layers if x.level <= level]
    start = whole[-1].level if whole else 0
    adds = sum(h.counts(level)) > sum(h.counts(start))  # a level between two weights' steps may add none
    extra = build_layers(st.tokens, h, [level], st.model.entropy(h.entropy_model), start) if adds else []
    stage = Container(without_idle_caps(h, level), whole + extra)
    return container.write(Container(c.header, c.layers, stages=kept + [stage]))
