"""Photo <-> .odp bytes: input normalisation, tiling, the model, entropy coding, the container."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageOps

from ..entropy import coder
from ..formats import container
from ..formats.container import Container, FormatError, Header, Layer
from . import tiling, weights
from .weights import Model

# Levels at which new files end a layer: the points where a file can be cut without re-coding
# (each layer costs about 7 bytes of header and coder flush). `truncate` reaches any level in between.
LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
          4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)


class OdpWarning(UserWarning):
    """Something the user should hear about, but not an error (alpha dropped, file cut short)."""


@dataclass
class Prepared:
    pixels: np.ndarray   # (H, W, 3) uint8 sRGB-or-as-tagged
    icc: bytes
    exif: bytes


METADATA = ("icc", "exif")


def prepare(im: Image.Image, keep: tuple[str, ...] = ()) -> Prepared:
    """Any Pillow image -> 8-bit RGB pixels, EXIF orientation applied.

    ODP makes small files, so metadata is dropped unless `keep` names it ("icc", "exif"),
    as cwebp does: an ICC profile or EXIF block can outweigh the whole image. A dropped
    ICC profile is first applied (pixels converted to sRGB), so colours stay right.
    Alpha is not coded: transparent images are flattened onto white, with a warning.
    16/32-bit greyscale is scaled to 8 bits rather than clipped.
    """
    unknown = set(keep) - set(METADATA)
    if unknown:
        raise ValueError(f"unknown metadata {sorted(unknown)[0]!r}: choose from {', '.join(METADATA)}")
    im.seek(0) if getattr(im, "n_frames", 1) > 1 else None
    icc = im.info.get("icc_profile") or b""
    if icc[16:20] != b"RGB ":  # a CMYK or grey profile would mis-tag the RGB output
        icc = b""
    if 0x0112 in im.getexif():  # only then: exif_transpose copies even an upright image
        im = ImageOps.exif_transpose(im)
    exif = im.getexif()
    exif.pop(0x0112, None)  # orientation is now applied to the pixels
    exif_bytes = exif.tobytes() if len(exif) else b""

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)  # integers: a float64 copy would take 8 bytes per pixel of a huge scan
        top = 65535 if im.mode.startswith("I;16") or a.max() > 255 else 255
        a = np.clip(a, 0, top).astype(np.uint32)
        im = Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8), "L")  # rounds as before: no ties
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.round(np.asarray(im)), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:  # palette or colour-key transparency
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            warnings.warn("alpha channel dropped: transparent pixels were flattened onto white", OdpWarning)
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        im = flat
    if im.mode != "RGB":
        im = im.convert("RGB")
    if icc and "icc" not in keep:
        im = to_srgb(im, icc)
        icc = b""
    return Prepared(rgb_array(im), icc, exif_bytes if "exif" in keep else b"")


def rgb_array(im: Image.Image, rows: int = 256) -> np.ndarray:
    """RGB image -> (H, W, 3) uint8, copied a strip at a time: np.asarray(im) goes through
    tobytes(), which holds the whole image twice more while it runs (measured on 50 MP)."""
    out = np.empty((im.height, im.width, 3), np.uint8)
    for y in range(0, im.height, rows):
        out[y:y + rows] = np.asarray(im.crop((0, y, im.width, min(y + rows, im.height))))
    return out


def to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Apply an embedded RGB profile, giving sRGB pixels; an unusable profile is ignored, with a warning."""
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        warnings.warn(f"ICC profile ignored (cannot be applied: {e})", OdpWarning)
        return im


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return device


def default_batch(device: str) -> int:
    return 64 if device == "cuda" else 4


@torch.inference_mode()
def image_to_tokens(pixels: np.ndarray, model: Model, device: str, batch: int) -> np.ndarray:
    """(H, W, 3) uint8 -> tokens (tiles, K) int32, tile by tile in batches."""
    tok = model.tokenizer.to(device)
    out = []
    for tiles in tiling.iter_tile_batches(pixels, model.config.tile, batch):
        x = torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(tok.encode(x).cpu().numpy().astype(np.int32))
    return np.concatenate(out)


@torch.inference_mode()
def tokens_to_image(tokens: np.ndarray, width: int, height: int, model: Model, device: str, batch: int,
                    counts: np.ndarray | None = None) -> np.ndarray:
    """tokens (tiles, k), of which tile t uses its first counts[t] (default all k) -> (H, W, 3) uint8.

    Tiles with equal counts go through the network together, given exactly their tokens."""
    tok, tile = model.tokenizer.to(device), model.config.tile
    counts = np.full(len(tokens), tokens.shape[1]) if counts is None else np.asarray(counts)
    canvas = np.empty((height, width, 3), np.uint8)
    for k in np.unique(counts):
        rows = np.flatnonzero(counts == k)
        for i in range(0, len(rows), batch):
            sel = rows[i:i + batch]
            ids = torch.from_numpy(tokens[sel, :k].astype(np.int64)).to(device)
            y = tok.decode(ids)
            tiles = torch.round((y + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for j, t in enumerate(sel):
                tiling.place_tiles(canvas, tiles[j:j + 1], int(t), tile)
    tiling.deblock(canvas, tile)
    return canvas


def layer_levels(h: Header, top: int) -> list[int]:
    """Levels ending the layers of a new file up to `top`: LEVELS, skipping any that add no token."""
    out, seen = [], 0
    for level in [lv for lv in LEVELS if lv < top] + [top]:
        n = sum(h.counts(level))
        if n > seen:
            out.append(level)
            seen = n
    return out


def pack(tokens: np.ndarray, width: int, height: int, model: Model, icc: bytes = b"", exif: bytes = b"",
         weights: bytes = b"", level: int | None = None, entropy=None, caps: bytes = b"",
         display: tuple[int, int] = (0, 0)) -> bytes:
    """Tokens (tiles, >= what `level` keeps) -> .odp bytes, layered at layer_levels (all tokens by default);
    `display`: the size to enlarge the coded width x height to when decoding (default: none)."""
    entropy = entropy or model.best_entropy
    h = Header(width, height, model.config.tile, model.config.tokens, model.sha256[:container.MODEL_ID_BYTES],
               entropy.id, weights, caps, icc, exif, *display)
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


# Token counts at which the encoder decodes every tile to weigh it, and (the top ones) to find where
# its later tokens stop helping. ENCODER_VERSION names what the encoder writes, for caches of its
# files (odp bench): 3 caps a lone tile too, 4 leaves idle caps out of files.
ALLOCATION_GRID = (4, 16, 48, 128, 192, 256)
ENCODER_VERSION = 4


def token_bits(toks: np.ndarray, entropy) -> np.ndarray:
    """(tiles, K) ideal code length in bits of each token under `entropy` (its context = earlier tokens)."""
    t_idx, pos = np.divmod(np.arange(toks.size), toks.shape[1])
    bits = np.empty(toks.size)
    for i in range(0, toks.size, coder.BLOCK):
        t, p = t_idx[i:i + coder.BLOCK], pos[i:i + coder.BLOCK]
        f = entropy.frequencies(coder.contexts(entropy, toks, t, p), p)
        bits[i:i + coder.BLOCK] = 24 - np.log2(f[np.arange(len(t)), toks[t, p]])
    return bits.reshape(toks.shape)


@torch.inference_mode()
def tile_errors(toks: np.ndarray, pixels: np.ndarray, model: Model, device: str, batch: int,
                tiles: np.ndarray, k: int) -> np.ndarray:
    """Squared error (summed over pixels) of each of `tiles` decoded from its first k tokens."""
    tok, tile = model.tokenizer.to(device), model.config.tile
    h, w = pixels.shape[:2]
    out = np.empty(len(tiles))
    for i in range(0, len(tiles), batch):
        sel = tiles[i:i + batch]
        y = tok.decode(torch.from_numpy(toks[sel, :k].astype(np.int64)).to(device))
        y = torch.round((y + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
        for j, t in enumerate(sel):
            r, c = divmod(int(t), -(-w // tile))
            y0, x0 = r * tile, c * tile
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            out[i + j] = ((y[j, :y1 - y0, :x1 - x0] - pixels[y0:y1, x0:x1]) ** 2).sum()
    return out


def allocation(toks: np.ndarray, pixels: np.ndarray, model: Model, device: str, batch: int,
               entropy) -> tuple[bytes, bytes]:
    """Per-tile allocation weights and token caps (header fields; b"" when every tile is alike).

    Each tile is decoded at ALLOCATION_GRID token counts; its squared error and exact code length
    there give, for each Lagrange multiplier, the count that minimises error + lambda * bits. Those
    optimal counts are fitted as tile weight x level (least squares in log counts), which is what a
    power-law rate-distortion curve per tile predicts; one weight per tile keeps the header small
    and every cut of the file near the optimal allocation for its size. The cap of a tile is the
    count of its least error (refined between grid points near the top): the model's last tokens
    can make a tile worse, and without caps the busiest tiles would reach them first. A lone tile
    needs no weights but still gets its cap: its file ends there (the cap itself, idle, is not
    written), so the whole file is never worse than a cut of it.
    """
    tiles_n, k_max = toks.shape
    everyone = np.arange(tiles_n)
    grid = np.array(sorted({k for k in ALLOCATION_GRID if k < k_max} | {k_max}))
    err = np.stack([tile_errors(toks, pixels, model, device, batch, everyone, k) for k in grid], 1)
    caps = _caps(toks, pixels, model, device, batch, grid, err)
    if tiles_n == 1:
        weights = np.full(1, 255, np.uint8)
    else:
        rate = np.cumsum(token_bits(toks, entropy), 1)
        weights = _weights(grid, err, rate[:, grid - 1])
    cap_bytes = np.clip(caps * 255 // k_max, 1, 255).astype(np.uint8)  # ceil(c * K / 255) <= caps
    return (b"" if (weights == 255).all() else weights.tobytes(),
            b"" if (cap_bytes == 255).all() else cap_bytes.tobytes())


def _caps(toks, pixels, model, device, batch, grid, err) -> np.ndarray:
    """Token count of least error per tile: the best grid count, then the midpoints beside it
    (for counts from 128 up, where tokens are many and a cap saves bytes)."""
    best = np.argmin(err, 1)
    caps, least = grid[best], err[np.arange(len(err)), best]
    probes: dict[int, list[int]] = {}
    for t, j in enumerate(best):
        if grid[j] < 128:
            continue
        for a, b in ((j - 1, j), (j, j + 1)):
            if 0 <= a and b < len(grid) and grid[a] + 1 < grid[b]:
                probes.setdefault(int((grid[a] + grid[b]) // 2), []).append(t)
    for k, tiles in sorted(probes.items()):
        e = tile_errors(toks, pixels, model, device, batch, np.array(tiles), k)
        better = e < least[tiles]
        caps[np.array(tiles)[better]], least[np.array(tiles)[better]] = k, e[better]
    return caps


def _weights(grid: np.ndarray, err: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Allocation weights 1..255 fitted to the Lagrangian optimum counts (see allocation)."""
    tiles_n, k_max = len(err), grid[-1]
    logk, fit = [], []
    for lam in np.geomspace(1e-2, 1e5, 60) * err.mean() / rate.mean():
        k = grid[np.argmin(err + lam * rate, 1)]
        if 1 < np.median(k) < k_max:
            logk.append(np.log(k))
            fit.append((k > grid[0]) & (k < grid[-1]))  # counts at the grid's ends are clipped, not chosen
    if not logk:
        return np.full(tiles_n, 255, np.uint8)
    a, m = np.array(logk).T, np.array(fit).T.astype(float)  # (tiles, lambdas)
    tile_w, level = np.zeros(tiles_n), np.zeros(a.shape[1])
    for _ in range(20):  # alternating least squares for log k = tile_w + level
        tile_w = ((a - level) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        tile_w[m.sum(1) == 0] = (a - level).mean(1)[m.sum(1) == 0]
        level = ((a - tile_w[:, None]) * m).sum(0) / np.maximum(m.sum(0), 1e-9)
    return np.clip(np.round(255 * np.exp(tile_w - tile_w.max())), 1, 255).astype(np.uint8)


QUALITY_BPP = (0.002, 0.08)  # --quality 1 and 100: the ends of a log scale of bits per pixel


def quality_to_bpp(quality: float) -> float:
    """cwebp-like --quality 1..100 -> a budget in bits per pixel, log-linear between QUALITY_BPP.

    A byte budget rather than a quantiser, because ODP's size is what truncation controls.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality {quality} is outside 1..100")
    lo, hi = QUALITY_BPP
    return lo * (hi / lo) ** ((quality - 1) / 99)


TARGET_METRICS = ("psnr", "ms-ssim")
SCALES = (1, 2, 3, 4)  # coding scales the encoder may try (docs/api.md, "Coding scale")
SCALE_CHOICES = ("auto", "psnr")  # besides a number: full size unless it cannot fit / the best PSNR


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size an image is coded at: 1/scale of each side, rounded, but never less than the format's
    1/16 (container.MAX_ENLARGE) allows."""
    least = container.MAX_ENLARGE
    return max(-(-width // least), round(width / scale)), max(-(-height // least), round(height / scale))


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> the same picture at size (width, height), Lanczos."""
    if size == (pixels.shape[1], pixels.shape[0]):
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").resize(size, Image.LANCZOS))


@dataclass
class Coded:
    """A whole file of one image coded at 1/scale, with its tokens (to render any truncation
    without entropy decoding)."""
    scale: int
    data: bytes
    tokens: np.ndarray


def encode_at(p: Prepared, scale: int, model: Model, device: str, batch: int, adaptive: bool = True) -> Coded:
    """The whole file of prepared pixels, coded at 1/scale of their size and enlarged back on decoding."""
    height, width = p.pixels.shape[:2]
    size = scaled_size(width, height, scale)
    pixels = resize(p.pixels, size)
    toks = image_to_tokens(pixels, model, device, batch)
    weights_, caps = allocation(toks, pixels, model, device, batch, model.best_entropy) if adaptive else (b"", b"")
    display = (width, height) if size != (width, height) else (0, 0)
    return Coded(scale, pack(toks, *size, model, p.icc, p.exif, weights_, caps=caps, display=display), toks)


def render(coded: Coded, data: bytes, model: Model, device: str, batch: int) -> np.ndarray:
    """The decoded pixels of `data`, a truncation of coded.data, from the tokens (no entropy decoding)."""
    c = container.read(data)
    h = c.header
    pixels = tokens_to_image(coded.tokens, h.width, h.height, model, device, batch, np.array(h.counts(c.level)))
    return resize(pixels, h.display_size)


class ScaleLadder:
    """One image coded at full size, then at each smaller scale of scales_for, each encoded only when
    first asked for: what `scale="auto"` walks down until a budget fits, and `scale="psnr"` compares."""

    def __init__(self, p: Prepared, model: Model, device: str, batch: int, adaptive: bool = True):
        self.p, self.model, self.device, self.batch, self.adaptive = p, model, device, batch, adaptive
        self.scales = scales_for(p.pixels.shape[1], p.pixels.shape[0], model.config.tile)
        self.encoded: list[Coded] = []

    def __iter__(self):
        for i, s in enumerate(self.scales):
            if i == len(self.encoded):
                self.encoded.append(encode_at(self.p, s, self.model, self.device, self.batch, self.adaptive))
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


def best_within(codeds: list[Coded], max_bytes: int, reference: np.ndarray, model: Model, device: str,
                batch: int) -> tuple[bytes, Coded]:
    """Of each coded file's largest truncation within max_bytes, the one of highest PSNR against
    `reference` (the first on ties). ValueError when none fits, as truncate raises it for the last."""
    from .metrics import psnr

    cuts = list(_cuts_within(codeds, max_bytes))
    if len(cuts) == 1:
        return cuts[0]
    scores = [psnr(reference, render(coded, data, model, device, batch)) for data, coded in cuts]
    return cuts[scores.index(max(scores))]


def scales_for(width: int, height: int, tile: int, scales=SCALES) -> list[int]:
    """The scales worth trying: each must code the image in fewer tiles than the one before it."""
    out, prev = [], None
    for s in scales:
        n = tiling.grid(*scaled_size(width, height, s), tile)
        if prev is None or n[0] * n[1] < prev:
            out.append(s)
            prev = n[0] * n[1]
    return out


def encode(im: Image.Image, tokens: int | None = None, max_bytes: int | None = None,
           model: Model | None = None, device: str = "auto", batch: int | None = None,
           metadata: tuple[str, ...] = (), target: tuple[str, float] | None = None,
           quality: float | None = None, max_pixels: int | None = container.FROM_ENV,
           adaptive: bool = True, scale: int | str = "auto") -> bytes:
    """Encode a Pillow image to .odp bytes (`adaptive`: tiles get tokens by need, see
    allocation; else every tile alike), keeping `tokens` per tile (on average), fitting `max_bytes`, at
    `quality` 1..100 (a budget, see quality_to_bpp; never less than 1 token per tile), or the
    smallest truncation reaching `target` = (metric, value), metric "psnr" or "ms-ssim";
    `metadata` names what to carry ("icc", "exif"; default none, see prepare). Images over
    `max_pixels` are refused before their pixels are decoded.

    `scale`: code the image at 1/scale of each side (1..16), enlarged back when decoded. "auto"
    (the default): full size, unless `max_bytes` cannot hold 1 token per full-size tile; then the
    largest of SCALES' sizes that fits. "psnr": with a byte budget, try SCALES and keep the file of
    highest PSNR; with a `target`, the smallest file that reaches it (better PSNR and MS-SSIM at
    small sizes, but blurrier: LPIPS-VGG and DISTS usually prefer full size; docs/api.md)."""
    check_pixels(im.width, im.height, max_pixels)
    if scale is None:
        scale = "auto"
    if isinstance(scale, str) and scale not in SCALE_CHOICES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALE_CHOICES)} or a number 1..16")
    if not isinstance(scale, str) and not 1 <= scale <= container.MAX_ENLARGE:
        raise ValueError(f"scale {scale} is outside 1..{container.MAX_ENLARGE}")
    model = model or weights.load()
    dev = pick_device(device)
    batch = batch or default_batch(dev)
    p = prepare(im, metadata)
    height, width = p.pixels.shape[:2]
    if quality is not None:
        max_bytes = int(quality_to_bpp(quality) * height * width / 8)
    sized = tokens is None and ((max_bytes is not None) != (target is not None))  # one size goal
    ladder = ScaleLadder(p, model, dev, batch, adaptive)
    if not isinstance(scale, str):
        codeds = [encode_at(p, scale, model, dev, batch, adaptive)]
    else:
        codeds = list(ladder) if scale == "psnr" and sized else [ladder.full]
    coded = codeds[0]
    data = coded.data
    if tokens is not None:
        data = truncate(data, tokens=tokens)
    if max_bytes is not None:
        if quality is not None:  # a quality never gives less than 1 token per tile of the smallest file
            max_bytes = max(max_bytes, min(len(truncate(c.data, tokens=1)) for c in codeds))
        if tokens is None and scale == "auto":  # smaller sizes are encoded only if full size cannot fit
            data, coded = first_within(ladder, max_bytes)
        elif tokens is None:
            data, coded = best_within(codeds, max_bytes, p.pixels, model, dev, batch)
        else:
            data = truncate(data, max_bytes=max_bytes)
    if target is not None:
        cut = tokens is not None or max_bytes is not None
        reached = []
        for c, d in [(coded, data)] if cut else [(c, c.data) for c in codeds]:
            f = container.read(d)
            level = level_reaching(c.tokens, p.pixels, f.header, target, model, dev, batch, f.level)
            if level is not None:
                reached.append(truncate(d, level=level))
        if not reached:
            warnings.warn(f"{target[0]} {target[1]} is out of reach: keeping every token", OdpWarning)
        data = min(reached, key=len) if reached else data
    return data


def level_reaching(toks: np.ndarray, pixels: np.ndarray, h: Header, target: tuple[str, float], model: Model,
                   device: str, batch: int, top: int) -> int | None:
    """The lowest allocation level up to `top` of header h whose decoded image (enlarged to h's
    display size) reaches `target` against `pixels`, found by bisection (quality rises with the
    level on average; every candidate is decoded and measured). None when even `top` falls short."""
    from . import metrics

    name, value = target
    if name not in TARGET_METRICS:
        raise ValueError(f"unknown target metric {name!r}: choose from {', '.join(TARGET_METRICS)}")
    score = {"psnr": metrics.psnr, "ms-ssim": metrics.ms_ssim}[name]
    height, width = pixels.shape[:2]
    if name == "ms-ssim" and min(height, width) < metrics.MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {metrics.MS_SSIM_MIN_SIDE} pixels a side")

    def reaches(level: int) -> bool:
        image = resize(tokens_to_image(toks, h.width, h.height, model, device, batch, np.array(h.counts(level))),
                       h.display_size)
        return score(pixels, image) >= value

    lo, hi = 1, top
    if not reaches(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def check_pixels(width: int, height: int, max_pixels: int | None = container.FROM_ENV) -> None:
    """Refuse an input image over the pixel limit before any of its pixels is decoded (bomb guard)."""
    limit = container.pixel_limit(max_pixels)
    if limit is not None and width * height > limit:
        raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {limit} pixels")


def min_first_layer_bytes(tiles: int, entropy) -> int:
    """Fewest bytes a valid first layer for `tiles` tiles can have.

    The first layer codes every tile's first token, none of which is likelier than the model's
    largest probability at position 0, so the stream holds at least that many bits per tile (less
    2% and 8 bytes of slack for the coder's quantiser). This ties a header's tile count to the
    bytes actually sent: a 100-byte file cannot make the decoder run the network on thousands of tiles.
    """
    return max(0, int(entropy.first_token_bits() * tiles * 0.98 / 8) - 8)


def open_container(data: bytes, max_pixels: int | None = container.FROM_ENV) -> tuple[Container, Model, object]:
    """Parse bytes and find the model and entropy model they need; warn when the payload is cut short."""
    c = container.read(data, max_pixels)
    h = c.header
    model = weights.load_by_hash(h.model_id, h.model_name)
    if model.config.tile != h.tile or model.config.tokens != h.tokens:
        raise FormatError(f"file header does not match model '{model.name}' (tile layout differs)")
    try:
        entropy = model.entropy(h.entropy_model)
    except weights.ModelNotFound as e:
        raise FormatError(str(e)) from None
    least = min_first_layer_bytes(h.tiles, entropy)
    if c.layers and len(c.layers[0].data) < least:
        raise FormatError(f"first layer of {len(c.layers[0].data)} bytes is too short for {h.tiles} tiles "
                          f"(at least {least}): the file is corrupt")
    if not c.complete:
        if not c.layers:
            raise FormatError("file is cut short before its first complete layer of tokens")
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
                strict: bool = False, level: int | None = None) -> tuple[Container, Model, np.ndarray, np.ndarray]:
    """Entropy-decode a file -> (container, model, tokens (tiles, K), counts per tile); no neural network runs.
    With `tokens`, decode only up to the level keeping at most that many per tile on average; with
    `level`, up to that level. `strict` also refuses a layer that is not exactly the coding of its
    tokens (see verify)."""
    c, model, entropy = open_container(data, max_pixels)
    h = c.header
    if level is None:
        level = c.level if tokens is None else level_for_tokens(h, max(1, tokens), c.level)
    level = min(c.level, level)
    toks = np.zeros((h.tiles, h.tokens), np.int32)
    before = np.array(h.counts(0))
    for i, layer in enumerate(c.layers):  # a layer that goes past `level` is decoded whole, then cut
        after = np.array(h.counts(layer.level))
        try:
            coder.decode_layer(layer.data, toks, before, after, entropy, layer.check, strict)
        except coder.EntropyError as e:
            raise FormatError(f"payload layer {i} does not decode (the file is corrupt): {e}") from None
        before = after
        if layer.level >= level:
            break
    return c, model, toks, np.array(h.counts(level))


def verify(data: bytes, max_pixels: int | None = container.FROM_ENV) -> None:
    """FormatError unless the file is whole: header CRC good, every layer present, decoding to tokens
    that pass their checks, and exactly the range coding of those tokens. No network runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OdpWarning)
        c, _, _, _ = read_tokens(data, max_pixels=max_pixels, strict=True)
    if not c.complete:
        raise FormatError(f"file is cut short: only {len(c.layers)} layers are whole")


def decode(data: bytes, tokens: int | None = None, device: str = "auto", batch: int | None = None,
           max_pixels: int | None = container.FROM_ENV) -> Image.Image:
    """.odp bytes -> Pillow RGB image, using at most `tokens` tokens per tile on average; refuses images
    over `max_pixels` (default $ODP_MAX_PIXELS or container.DEFAULT_MAX_PIXELS) before allocating them."""
    c, model, toks, counts = read_tokens(data, tokens, max_pixels)
    dev = pick_device(device)
    h = c.header
    pixels = tokens_to_image(toks, h.width, h.height, model, dev, batch or default_batch(dev), counts)
    im = Image.fromarray(resize(pixels, h.display_size), "RGB")
    if h.icc:
        im.info["icc_profile"] = h.icc
    if h.exif:
        im.info["exif"] = h.exif
    return im


def without_idle_caps(h: Header, level: int) -> Header:
    """h without its token caps when no tile reaches its cap by `level`: a file cut there counts the
    same tokens without them, and small files should not spend a byte per tile on them."""
    bare = replace(h, caps=b"")
    return bare if h.caps and bare.counts(level) == h.counts(level) else h


def truncate(data: bytes, tokens: int | None = None, max_bytes: int | None = None, level: int | None = None) -> bytes:
    """A smaller valid file: at `tokens` per tile (on average, for an adaptive file), or the largest
    that fits `max_bytes`. Whole layers are kept byte for byte; only a partial last layer is re-coded,
    by the entropy coder alone (no neural network runs). A version-1 file comes out as version 2.
    Only the layers the result can hold are entropy-decoded (the context model is slow)."""
    c = container.read(data)
    if level is not None:
        need = max(1, min(level, c.level))
    elif tokens is not None:
        if tokens < 1:
            raise ValueError("--tokens must be at least 1")
        need = level_for_tokens(c.header, tokens, c.level)
    elif max_bytes is not None:  # no level past the first layer whose payload alone ends beyond max_bytes fits
        ends = np.cumsum([len(x.data) for x in c.layers])
        over = [x.level for x, end in zip(c.layers, ends) if end > max_bytes]
        need = over[0] if over else c.level
    else:
        need = c.level
    c, model, toks, _ = read_tokens(data, level=need)
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
    lo, hi = 1, need
    smallest = len(at_level(lo))
    if smallest > max_bytes:
        raise ValueError(f"{max_bytes} bytes cannot hold even 1 token per tile (that needs {smallest})")
    while lo < hi:  # file size grows with the level: binary search for the highest level that fits
        mid = (lo + hi + 1) // 2
        if len(at_level(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return at_level(lo)


@torch.inference_mode()
def images_to_tokens(pixel_list: list[np.ndarray], model: Model, device: str, batch: int) -> list[np.ndarray]:
    """Several (H, W, 3) uint8 images -> tokens (tiles, K) int32 of each; one batch may mix images' tiles."""
    tok, tile = model.tokenizer.to(device), model.config.tile

    def batches():
        pending: list[np.ndarray] = []
        for px in pixel_list:
            for tiles in tiling.iter_tile_batches(px, tile, batch):
                pending.append(tiles)
                while sum(len(t) for t in pending) >= batch:
                    joined = np.concatenate(pending)
                    yield joined[:batch]
                    pending = [joined[batch:]]
        if sum(len(t) for t in pending):
            yield np.concatenate(pending)

    out = []
    for tiles in batches():
        x = torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(tok.encode(x).cpu().numpy().astype(np.int32))
    counts = [tiling.grid(px.shape[1], px.shape[0], tile) for px in pixel_list]
    return np.split(np.concatenate(out), np.cumsum([c * r for c, r in counts])[:-1])


def encode_many(ims: list[Image.Image], tokens: int | None = None, max_bytes: int | None = None,
                model: Model | None = None, device: str = "auto", batch: int | None = None,
                metadata: tuple[str, ...] = (), max_pixels: int | None = container.FROM_ENV) -> list[bytes]:
    """Encode several Pillow images (as encode with adaptive=False and scale=1: every tile alike, full
    size), batching tiles of different images together through the network: the throughput path."""
    if not ims:
        return []
    for im in ims:
        check_pixels(im.width, im.height, max_pixels)
    model = model or weights.load()
    dev = pick_device(device)
    prepared = [prepare(im, metadata) for im in ims]
    toks = images_to_tokens([p.pixels for p in prepared], model, dev, batch or default_batch(dev))
    out = []
    for p, t in zip(prepared, toks):
        data = pack(t, p.pixels.shape[1], p.pixels.shape[0], model, p.icc, p.exif)
        if tokens is not None:
            data = truncate(data, tokens=tokens)
        if max_bytes is not None:
            data = truncate(data, max_bytes=max_bytes)
        out.append(data)
    return out
