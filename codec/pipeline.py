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
from ..formats.container import Container, FormatError, Header
from . import tiling, weights
from .weights import Model

CHUNK_TOKENS = 8  # token positions per payload chunk: the granularity of a cut file


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
def tokens_to_image(tokens: np.ndarray, width: int, height: int, model: Model, device: str, batch: int) -> np.ndarray:
    """tokens (tiles, k) -> (H, W, 3) uint8."""
    tok = model.tokenizer.to(device)
    canvas = np.empty((height, width, 3), np.uint8)
    for i in range(0, len(tokens), batch):
        ids = torch.from_numpy(tokens[i:i + batch].astype(np.int64)).to(device)
        y = tok.decode(ids)
        tiles = torch.round((y + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        tiling.place_tiles(canvas, tiles, i, model.config.tile)
    tiling.deblock(canvas, model.config.tile)
    return canvas


def pack(tokens: np.ndarray, width: int, height: int, model: Model, icc: bytes = b"", exif: bytes = b"") -> bytes:
    """Tokens (tiles, kept) -> .odp bytes."""
    h = Header(width, height, model.config.tile, model.config.tokens, tokens.shape[1], CHUNK_TOKENS,
               model.name, model.sha256, model.entropy_model, icc, exif)
    return container.write(Container(h, coder.encode_tokens(tokens, CHUNK_TOKENS, model.tables)))


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


def encode(im: Image.Image, tokens: int | None = None, max_bytes: int | None = None,
           model: Model | None = None, device: str = "auto", batch: int | None = None,
           metadata: tuple[str, ...] = (), target: tuple[str, float] | None = None,
           quality: float | None = None, max_pixels: int | None = container.FROM_ENV) -> bytes:
    """Encode a Pillow image to .odp bytes, keeping `tokens` per tile, fitting `max_bytes`, at
    `quality` 1..100 (a budget, see quality_to_bpp; never less than 1 token per tile), or the
    smallest truncation reaching `target` = (metric, value), metric "psnr" or "ms-ssim";
    `metadata` names what to carry ("icc", "exif"; default none, see prepare). Images over
    `max_pixels` are refused before their pixels are decoded."""
    check_pixels(im.width, im.height, max_pixels)
    model = model or weights.load()
    dev = pick_device(device)
    batch = batch or default_batch(dev)
    p = prepare(im, metadata)
    toks = image_to_tokens(p.pixels, model, dev, batch)
    data = pack(toks, p.pixels.shape[1], p.pixels.shape[0], model, p.icc, p.exif)
    if tokens is not None:
        data = truncate(data, tokens=tokens)
    if max_bytes is not None:
        data = truncate(data, max_bytes=max_bytes)
    if quality is not None:
        budget = int(quality_to_bpp(quality) * p.pixels.shape[0] * p.pixels.shape[1] / 8)
        data = truncate(data, max_bytes=max(budget, len(truncate(data, tokens=1))))
    if target is not None:
        data = truncate(data, tokens=tokens_reaching(toks, p.pixels, target, model, dev, batch))
    return data


def tokens_reaching(toks: np.ndarray, pixels: np.ndarray, target: tuple[str, float], model: Model,
                    device: str, batch: int) -> int:
    """The fewest kept tokens per tile whose decoded image reaches `target`, found by bisection
    (quality rises with kept tokens on average; every candidate is decoded and measured).
    All tokens, with a warning, when even those fall short."""
    from . import metrics

    name, value = target
    if name not in TARGET_METRICS:
        raise ValueError(f"unknown target metric {name!r}: choose from {', '.join(TARGET_METRICS)}")
    score = {"psnr": metrics.psnr, "ms-ssim": metrics.ms_ssim}[name]
    h, w = pixels.shape[:2]
    if name == "ms-ssim" and min(h, w) < metrics.MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {metrics.MS_SSIM_MIN_SIDE} pixels a side")

    def reaches(k: int) -> bool:
        return score(pixels, tokens_to_image(toks[:, :k], w, h, model, device, batch)) >= value

    lo, hi = 1, toks.shape[1]
    if not reaches(hi):
        warnings.warn(f"{name} {value} is out of reach: keeping all {hi} tokens per tile", OdpWarning)
        return hi
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


def min_chunk_bytes(tiles: int, bounds: list[tuple[int, int]], model: Model) -> list[int]:
    """Fewest bytes a valid chunk of `tiles` x positions [start, end) can have, for each chunk.

    No token is likelier than its table's largest entry, so a range-coder stream holds at least
    sum(-log2 max p) bits per tile (less 2% and 8 bytes of slack for the coder's quantiser).
    This ties a header's tile count to the bytes actually sent: a 100-byte file cannot make the
    decoder run the network on thousands of tiles.
    """
    f = model.tables.freqs
    min_bits = np.log2(f.sum(1) / f.max(1))
    return [max(0, int(min_bits[s:e].sum() * tiles * 0.98 / 8) - 8) for s, e in bounds]


def open_container(data: bytes, max_pixels: int | None = container.FROM_ENV) -> tuple[Container, Model]:
    """Parse bytes and find the model they need; warn when the payload is cut short."""
    c = container.read(data, max_pixels)
    h = c.header
    model = weights.load_by_hash(h.weights_hash, h.model_name)
    if model.entropy_model != h.entropy_model or model.config.tile != h.tile or model.config.tokens != h.tokens:
        raise FormatError(f"file header does not match model '{model.name}' (entropy model or tile layout differ)")
    least = min_chunk_bytes(h.tiles, coder.chunk_bounds(h.kept, h.chunk_tokens)[:len(c.chunks)], model)
    for i, (chunk, n) in enumerate(zip(c.chunks, least)):
        if len(chunk) < n:
            raise FormatError(f"payload chunk {i} of {len(chunk)} bytes is too short for {h.tiles} tiles "
                              f"(at least {n}): the file is corrupt")
    if not c.complete:
        if not c.chunks:
            raise FormatError("file is cut short before its first complete chunk of tokens")
        warnings.warn(f"file is cut short: decoding the {c.kept} of {h.kept} tokens per tile that arrived whole",
                      OdpWarning)
    return c, model


def read_tokens(data: bytes, tokens: int | None = None, max_pixels: int | None = container.FROM_ENV,
                strict: bool = False) -> tuple[Container, Model, np.ndarray]:
    """Entropy-decode the tokens of a file (at most `tokens` per tile); no neural network runs.
    `strict` also refuses a chunk that is not exactly the coding of its tokens (see verify)."""
    c, model = open_container(data, max_pixels)
    h = c.header
    k = c.kept if tokens is None else min(max(1, tokens), c.kept)
    need = -(-k // h.chunk_tokens)
    try:
        toks = coder.decode_tokens(c.chunks[:need], h.tiles, h.kept, h.chunk_tokens, model.tables, strict)
    except coder.EntropyError as e:
        raise FormatError(f"payload does not decode: {e}") from None
    return c, model, toks[:, :k]


def verify(data: bytes, max_pixels: int | None = container.FROM_ENV) -> None:
    """FormatError unless the file is whole: header and every chunk CRC good, every chunk present,
    and every chunk exactly the range coding of the tokens it decodes to. No network runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OdpWarning)
        c, _, _ = read_tokens(data, max_pixels=max_pixels, strict=True)
    if not c.complete:
        raise FormatError(f"file is cut short: {len(c.chunks)} of {c.header.chunk_count} chunks are whole")


def decode(data: bytes, tokens: int | None = None, device: str = "auto", batch: int | None = None,
           max_pixels: int | None = container.FROM_ENV) -> Image.Image:
    """.odp bytes -> Pillow RGB image, using at most `tokens` tokens per tile; refuses images over
    `max_pixels` (default $ODP_MAX_PIXELS or container.DEFAULT_MAX_PIXELS) before allocating them."""
    c, model, toks = read_tokens(data, tokens, max_pixels)
    dev = pick_device(device)
    h = c.header
    pixels = tokens_to_image(toks, h.width, h.height, model, dev, batch or default_batch(dev))
    im = Image.fromarray(pixels, "RGB")
    if h.icc:
        im.info["icc_profile"] = h.icc
    if h.exif:
        im.info["exif"] = h.exif
    return im


def truncate(data: bytes, tokens: int | None = None, max_bytes: int | None = None) -> bytes:
    """A smaller valid file keeping `tokens` per tile, or the most tokens fitting `max_bytes`.

    Whole chunks are cut off the payload; only a partial last chunk is re-coded, by the
    entropy coder alone (no neural network runs).
    """
    c, model, toks = read_tokens(data)
    h, g = c.header, c.header.chunk_tokens

    def with_tokens(k: int) -> bytes:
        whole = k // g  # these chunks are kept byte for byte
        chunks = c.chunks[:whole]
        if k % g:
            chunks = chunks + [coder.encode_chunk(toks[:, whole * g:k], whole * g, model.tables)]
        return container.write(Container(replace(h, kept=k), chunks))

    if tokens is not None:
        if tokens < 1:
            raise ValueError("--tokens must be at least 1")
        return with_tokens(min(tokens, toks.shape[1]))
    if max_bytes is None:
        return with_tokens(toks.shape[1])
    lo, hi = 1, toks.shape[1]
    smallest = len(with_tokens(lo))
    if smallest > max_bytes:
        raise ValueError(f"{max_bytes} bytes cannot hold even 1 token per tile (that needs {smallest})")
    while lo < hi:  # file size grows with k: binary search for the largest k that fits
        mid = (lo + hi + 1) // 2
        if len(with_tokens(mid)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return with_tokens(lo)


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
    """Encode several Pillow images (as encode), batching tiles of different images together through the network."""
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
