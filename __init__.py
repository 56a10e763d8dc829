"""ODP: a learned image codec whose quality is chosen after encoding, by cutting the file shorter.

The public API (docs/api.md):

    data = odp.encode(image, tokens=None, bytes=None)   # PIL image, numpy array or torch tensor -> .odp bytes
    image = odp.decode(data, tokens=None)               # -> PIL.Image (RGB)
    small = odp.truncate(data, tokens=32)               # a shorter valid file; no network runs
    odp.info(data)                                      # -> odp.Info, from the header alone
    odp.verify(data)                                    # odp.FormatError unless the file is whole
    odp.model_of(data)                                  # -> odp.ModelInfo of the installed model it needs
    odp.encode_batch(images)                            # tiles of many images batched through the network
    odp.encode_groups((key, image) pairs)               # the same for a stream of many, group by group
    odp.Encoding(image).within(bytes=2000)              # encode once, then cut to any budget
    odp.encode_file / decode_file / truncate_file       # paths in, outputs written atomically
    odp.transcode(paths, "out/", cluster="local")       # many files on a Ray cluster (the odp[ray] extra)
    odp.register_pillow()                               # Image.open / save of .odp files
    odp.EncodeOptions(...)                              # the validated options every entry point uses

`import odp` is cheap, and info, verify, truncate and model_of never import torch: only
encoding and decoding pixels run the network.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from .codec.options import EncodeOptions

    ImageLike = Image.Image | np.ndarray | torch.Tensor

__version__ = "0.1.0"
MIME_TYPE = "image/x-odp"
EXTENSION = ".odp"

__all__ = ["encode", "decode", "truncate", "cut_points", "info", "Info", "StageInfo", "verify", "model_of", "model_info", "pixel_limit", "ModelInfo", "encode_batch", "encode_groups",
           "Encoding", "is_odp", "encode_file", "decode_file", "truncate_file", "save_decoded", "transcode", "register_pillow", "EncodeOptions",
           "FormatError", "ModelNotFound", "OptionError", "InputError", "OdpWarning", "open_image", "MIME_TYPE", "EXTENSION",
           "IMAGE_SUFFIXES", "__version__"]

_LAZY = {"FormatError": ("odp.codec.errors", "FormatError"),
         "ModelNotFound": ("odp.codec.errors", "ModelNotFound"),
         "OptionError": ("odp.codec.errors", "OptionError"),
         "InputError": ("odp.codec.errors", "InputError"),
         "OdpWarning": ("odp.codec.errors", "OdpWarning"),
         "EncodeOptions": ("odp.codec.options", "EncodeOptions"),
         "IMAGE_SUFFIXES": ("odp.codec.imaging", "IMAGE_SUFFIXES")}


def __getattr__(name: str) -> Any:
    """The error classes, the options and the suffixes, imported on first use (none imports torch)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'odp' has no attribute {name!r}")


@dataclass(frozen=True)
class Info:
    """What an .odp file holds (odp.info); read from the header alone, no model needed."""

    width: int              # of the decoded image
    height: int
    tile: int               # tile side in pixels
    cols: int               # tiles per row
    rows: int               # tiles per column
    tiles: int              # cols * rows
    tokens: int             # tokens of the fullest tile this file decodes with (those that arrived whole)
    stored_tokens: int      # the same, as the header says they were stored (more than `tokens` if cut short)
    model_tokens: int       # tokens per tile the model makes (the most a file can keep)
    complete: bool          # False when the file was cut short (e.g. an interrupted download)
    file_bytes: int
    payload_bytes: int      # entropy-coded tokens, without header and checksums
    bpp: float              # bits per pixel, whole file
    bits_per_token: float   # payload bits per decodable token (0.0 when nothing arrived)
    model: str              # name of the model the file needs ("odp-small-v1"; version-1 files only, else "")
    weights_sha256: str     # hex sha256 (version 2: its first 8 hex digits) of that model's weights file
    entropy_model: str
    icc_profile_bytes: int
    exif_bytes: int
    mean_tokens: float = 0.0  # tokens per tile on average (tiles differ when `adaptive`)
    adaptive: bool = False    # tiles got tokens by need rather than alike
    layers: int = 0           # complete payload layers: the points where the file can be cut as is
    version: int = 2          # format version
    coded_width: int = 0      # the size the tokens code: smaller than width x height when the encoder
    coded_height: int = 0     # chose a coding scale (docs/api.md), else the same
    tokens_min: int = 0       # the fewest and most tokens a tile keeps in this file
    tokens_max: int = 0
    truncation_points: tuple[int, ...] = ()  # allocation level at the end of each complete layer
    gray: bool = False        # a greyscale image: odp.decode returns an "L" image
    stages: int = 1           # stages that arrived: 1, or more in a format-version-3 file (the other
                              # fields describe its first stage)
    refinements: tuple[StageInfo, ...] = ()  # the refinement stages that arrived, in order
    base: str = ""            # format version 4: the codec of the base thumbnail the first stage refines
                              # ("avif" or "webp"; an AVIF one is stored with its boxes packed)
    base_width: int = 0       # ... its size in pixels (the image shrunk base_shrink times each side)
    base_height: int = 0
    base_shrink: int = 0
    base_bytes: int = 0       # ... its file's bytes, part of the header (the smallest cut of the file)
    base_low_band: int = 0    # ... 255ths of its low band the picture takes in place of its own (0: none)


@dataclass(frozen=True)
class StageInfo:
    """A refinement stage of a format-version-3 file (odp.info(data).refinements)."""

    coded_width: int        # the size its tokens code: a whole multiple of the picture's
    coded_height: int
    tiles: int
    mean_tokens: float      # tokens per tile on average that arrived whole
    model_tokens: int       # tokens per tile its model makes
    layers: int             # complete layers
    payload_bytes: int
    weights_sha256: str     # hex, its first 8 digits: the refinement model's weights
    entropy_model: str


@dataclass(frozen=True)
class ModelInfo:
    """The installed model a file needs (odp.model_of); found without loading its network."""

    name: str
    weights_sha256: str     # hex sha256 of the whole weights file
    tokens: int             # tokens per tile the model makes
    codebook_size: int      # distinct token ids: log2 of it is the bits of a raw token
    entropy_model: str      # the probability model the file is coded with


def _data(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        raise TypeError(f"{what}() takes the bytes of an .odp file, not a path: use odp.{what}_file() "
                        f"or Path(...).read_bytes()")
    raise TypeError(f"{what}() takes bytes, not {type(data).__name__}")


def _count(value: Any, name: str) -> int | None:
    from .codec.options import count

    return count(value, name)


def _to_pil(image: Any) -> Image.Image:
    """A PIL image, an H×W / H×W×3 / H×W×4 uint8 array, or a 3×H×W / 1×H×W / H×W tensor -> PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise ValueError(f"tensor image must be 3xHxW, 1xHxW or HxW, not {'x'.join(map(str, t.shape))}"
                             + (" (for a batch, use encode_batch(list(tensor)))" if t.dim() == 4 else ""))
        if t.is_floating_point():
            if t.numel() and not (torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1):
                raise ValueError("float tensor image must hold values in [0, 1]")
            t = torch.round(t.float() * 255).to(torch.uint8)
        elif t.dtype != torch.uint8:
            raise TypeError(f"tensor image must be float in [0, 1] or uint8, not {t.dtype}")
        image = t.numpy()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(image, np.ndarray):
        a = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if a.dtype != np.uint8:
            raise TypeError(f"array image must be uint8 (0..255), not {a.dtype}")
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise ValueError(f"array image must be HxW, HxWx3 or HxWx4, not {'x'.join(map(str, a.shape))}")
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"image is empty ({a.shape[1]}x{a.shape[0]} pixels)")
        return Image.fromarray(np.ascontiguousarray(a))  # L, RGB or RGBA
    if isinstance(image, (str, os.PathLike)):
        raise TypeError("encode() takes an image, not a path: use odp.encode_file() or PIL.Image.open()")
    raise TypeError(f"expected a PIL image, numpy array or torch tensor, not {type(image).__name__}")


def encode(image: ImageLike, tokens: int | None = None, bytes: int | None = None, device: str = "auto",  # noqa: A002
           metadata: tuple[str, ...] = (), quality: float | None = None, psnr: float | None = None,
           msssim: float | None = None, adaptive: bool = True, scale: int | str = "auto",
           bpp: float | None = None, refine: bool = True, options: EncodeOptions | None = None,
           progress=None, base: bool = True) -> bytes:
    """Encode an image to .odp bytes: all tokens, the first `tokens` per tile (of the first stage), the
    largest file within `bytes` (or `bpp`), a `quality` 1..100 (a budget from 0.002 to 0.3 bpp, as
    `odp encode --quality`), or the smallest file whose decoded image reaches `psnr` (dB) or `msssim`;
    give at most one of these.

    `image`: a PIL image (any mode; alpha is flattened onto white), a numpy uint8 array H×W×3 (RGB),
    H×W×4 (RGBA) or H×W (grey), or a torch tensor 3×H×W / 1×H×W / H×W, float in [0, 1] or uint8.
    `device`: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"; the file is the same format either way.
    `metadata`: what to carry from a PIL image ("icc", "exif"); by default none (colours converted to sRGB).
    `adaptive`: tiles get tokens by need (`tokens` is then a mean); False gives every tile the same
    number, encoding several times faster.
    `refine`: go on past the first stage's whole file (about 0.035 bpp) into the model's refinement
    stage, up to about 0.25 bpp: one file from thumbnail to photo (format version 3; the default).
    False: the first stage alone, encoded faster.
    `base`: with a byte budget (`bytes`, `bpp`, `quality`), start the file from an AVIF or WebP
    thumbnail that the tokens of a model trained for it refine (format version 4), where one fits:
    a far better picture at small sizes. False: tokens only (versions 2 and 3).
    `scale`: code the image at 1/scale of each side (1..16), enlarged back when decoded; "auto" (the
    default): full size unless `bytes` cannot hold 1 token per tile; "psnr": the coding scale of
    highest PSNR within `bytes`/`quality`, or the smallest file reaching `psnr`/`msssim` (docs/api.md).
    `options`: an odp.EncodeOptions instead of the keywords (then give no other keyword).
    `progress`: a callable told `(what, done, total)` after every batch of tiles through the network,
    `what` being "encoding", "scoring" (the allocation's trial decodes) or "decoding" (rate control
    measuring a cut); `done` of `total` tiles of the current pass. For a progress bar.
    """
    from .codec import coding
    from .codec.options import EncodeOptions

    keywords = EncodeOptions(tokens=tokens, bytes=bytes, bpp=bpp, quality=quality, psnr=psnr, msssim=msssim,
                             scale=scale, adaptive=adaptive, refine=refine, base=base, metadata=metadata,
                             device=device)
    if options is not None and keywords != EncodeOptions():
        from .codec.errors import OptionError

        raise OptionError("give options= or keywords, not both")
    return coding.encode(_to_pil(image), options or keywords, progress=progress)


def encode_batch(images: Iterable[ImageLike], tokens: int | None = None, bytes: int | None = None,  # noqa: A002
                 device: str = "auto", batch: int | None = None, adaptive: bool = True, refine: bool = True,
                 options: EncodeOptions | None = None) -> list[bytes]:
    """Encode many images as encode() would each, their tiles batched together through the network.

    Takes the same image kinds as encode() and returns one .odp file per image, in order; every image
    is checked (pixels, budget) before any is encoded. `batch` is tiles per network call (default 64
    on CUDA, 4 on CPU). A batch mixing images can round a token differently from encode() alone
    (float rounding under another batch shape); every file is valid. `options=` takes every goal of
    encode(), quality targets included.
    """
    from .codec import coding
    from .codec.options import EncodeOptions

    if options is None:
        options = EncodeOptions(tokens=tokens, bytes=bytes, device=device, batch=batch, adaptive=adaptive,
                                refine=refine)
    ims = [_to_pil(im) for im in images]
    return coding.encode_many(ims, options)


def encode_groups(items: Iterable[tuple[Any, ImageLike]], options: EncodeOptions | None = None):
    """Many images, read lazily as (key, image) pairs, encoded in groups of about 1.5 MP through one
    encode_batch each: yields each group as a list of (key, PIL image, file or None). None where the
    group's batch failed or warned: encode that image alone with encode(), so the error or warning
    names it. The many-files path of `odp encode` and odp.transcode; memory stays one group's."""
    from .codec import coding
    from .codec.options import EncodeOptions

    yield from coding.encode_groups(((k, _to_pil(im)) for k, im in items), options or EncodeOptions())


class Encoding:
    """An image encoded once; every size goal is then a cut of that file, at no further network cost
    except for smaller coding scales, encoded the first time a budget needs them.

        enc = odp.Encoding(image)
        enc.whole                    # every token: what odp.encode(image) returns
        enc.within(2000)             # the same file as odp.encode(image, bytes=2000)
        enc.with_tokens(32)          # the same file as odp.encode(image, tokens=32)
    """

    def __init__(self, image: ImageLike, adaptive: bool = True, device: str = "auto",
                 metadata: tuple[str, ...] = (), refine: bool = True, base: bool = True) -> None:
        from .codec import coding, ratecontrol
        from .codec.imaging import check_pixels, prepare
        from .codec.options import EncodeOptions

        im = _to_pil(image)
        self.options = EncodeOptions(adaptive=adaptive, device=device, metadata=metadata, refine=refine, base=base)
        check_pixels(im.width, im.height, self.options.max_pixels)
        self.engine = coding.engine_for(self.options)
        self.prepared = prepare(im, self.options.metadata)
        self._ladder = ratecontrol.ScaleLadder(self.prepared, self.engine, adaptive, refine=refine,
                                               max_pixels=self.options.max_pixels, base=refine and base)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image as coded at full size (EXIF orientation applied)."""
        return self.prepared.pixels.shape[1], self.prepared.pixels.shape[0]

    @property
    def pixels(self):
        """The (H, W, 3) uint8 pixels the file codes: the reference to score a decoded image against."""
        return self.prepared.pixels

    @property
    def model_tokens(self) -> int:
        """Tokens per tile the model makes: the most a file of this image can keep per tile."""
        return self.engine.entry.tokens

    @property
    def whole(self) -> bytes:
        """Every token: of both stages where the model has a refinement stage (`refine`)."""
        refined = self._ladder.refined
        return self._ladder.full.data if refined is None else refined.data

    @property
    def scales_encoded(self) -> list[int]:
        """The coding scales encoded so far (1 = full size): smaller ones only once a budget needed them."""
        return [c.scale for c in self._ladder.encoded]

    def with_tokens(self, tokens: int) -> bytes:
        """The first stage cut at `tokens` per tile."""
        return truncate(self._ladder.full.data, tokens=tokens)

    def within(self, bytes: int) -> bytes:  # noqa: A002
        """The largest file within `bytes`: with `base`, where a thumbnail fits, a version-4 file (the base
        model runs once per distinct thumbnail); else a cut of the whole file, or a smaller coding scale's
        when not even the first layer of it fits. Without a refinement stage, past the whole full-size file
        this returns that file, where `encode(bytes=)` codes the image larger (a cut of one encode is what
        this class is for)."""
        from .codec import ratecontrol

        budget = _count(bytes, "bytes")
        based = ratecontrol.based_within(self._ladder, budget)
        if based is not None:
            return based
        data, coded = ratecontrol.first_within(self._ladder, budget)
        return ratecontrol.refined_within(self._ladder, data, coded, budget)


def is_odp(prefix: bytes) -> bool:
    """Whether bytes (the first 16 are enough) start like an .odp file this version reads."""
    from .formats import container

    return container.is_odp(prefix)


def decode(data: bytes, tokens: int | None = None, device: str = "auto",
           max_pixels: int | None = None, progress=None, strict: bool = False) -> Image.Image:
    """Decode .odp bytes to a PIL image (RGB; L for a greyscale file), using at most `tokens` tokens per tile.

    A file cut short, or with a damaged layer, decodes from the whole layers before, with an
    odp.OdpWarning (`strict=True`: odp.FormatError instead). The model is found by the
    weights hash in the file; odp.ModelNotFound names it when it is not installed. Images of more than
    `max_pixels` (default $ODP_MAX_PIXELS or 2**28) are refused before any is allocated. `progress`:
    a callable told `("decoding", done, total)` tiles after every batch through the network.
    """
    from .codec import coding
    from .codec.options import DEVICES

    if device not in DEVICES:
        from .codec.errors import OptionError

        raise OptionError(f"unknown device {device!r} (use auto, cpu or cuda)")
    limit = _count(max_pixels, "max_pixels") if max_pixels is not None else -1  # -1: $ODP_MAX_PIXELS or 2**28
    return coding.decode(_data(data, "decode"), tokens=_count(tokens, "tokens"), device=device, max_pixels=limit,
                         progress=progress, strict=bool(strict))


def truncate(data: bytes, tokens: int | None = None, bytes: int | None = None,  # noqa: A002
             layers: int | None = None) -> bytes:
    """A shorter valid .odp file keeping `tokens` per tile, the most tokens that fit `bytes`, or its
    first `layers` complete layers (the file's own cut points, odp.info(data).truncation_points);
    give one. No neural network runs: whole layers are cut, only a partial last one is re-coded.
    """
    from .codec import stream
    from .codec.errors import OptionError

    tokens, budget, layers = _count(tokens, "tokens"), _count(bytes, "bytes"), _count(layers, "layers")
    if sum(x is not None for x in (tokens, budget, layers)) != 1:
        raise OptionError("give exactly one of tokens, bytes or layers")
    data = _data(data, "truncate")
    if layers is not None:
        described = info(data)
        if described.stages > 1:  # counted across the stages: the layers of cut_points
            points = stream.cut_points(data)
            return stream.truncate(data, max_bytes=points[min(layers, len(points)) - 1][0])
        points = described.truncation_points
        return stream.truncate(data, level=points[min(layers, len(points)) - 1] if points else 1)
    return stream.truncate(data, tokens=tokens, max_bytes=budget)


def info(data: bytes) -> Info:
    """Describe an .odp file from its header (raises odp.FormatError if it is not a valid one)."""
    from .codec.thumbnail import PICTURE
    from .formats import container

    raw = _data(data, "info")
    c = container.read(raw)
    h = c.header
    payload = c.payload_bytes
    counts = h.counts(c.level)
    n = sum(counts)
    width, height = h.display_size
    return Info(width, height, h.tile, h.cols, h.rows, h.tiles, c.kept, max(h.counts(c.declared_level)),
                h.tokens, c.complete, len(raw), payload, len(raw) * 8 / (width * height),
                payload * 8 / n if n else 0.0, h.model_name, h.model_id.hex(), h.entropy_model, len(h.icc),
                len(h.exif), c.mean_tokens, h.adaptive, len(c.layers), h.version, h.width, h.height,
                min(counts), max(counts), tuple(x.level for x in c.layers), h.gray, 1 + len(c.stages),
                tuple(StageInfo(s.header.width, s.header.height, s.header.tiles, s.mean_tokens, s.header.tokens,
                                len(s.layers), s.payload_bytes, s.header.model_id.hex(), s.header.entropy_model)
                      for s in c.stages),
                PICTURE.get(container.BASE_CODECS.get(h.base_codec), ""), *(h.base_size if h.base else (0, 0)),
                h.base_shrink, len(h.base), h.base_low_band)


def cut_points(data: bytes) -> list[tuple[int, float]]:
    """(bytes, mean tokens per tile) of each file `truncate` keeps whole layers for, smallest first:
    the sizes a cut reaches without re-coding anything (a cut between two is re-coded, and also valid)."""
    from .codec import stream

    return stream.cut_points(_data(data, "cut_points"))


def verify(data: bytes, whole: bool = True) -> None:
    """Raise odp.FormatError unless the file is whole: header checksum good, every layer present and
    exactly the range coding of tokens that pass their checks. With whole=False, only that the layers
    that arrived decode to tokens passing their checks (a file cut short passes, with an
    odp.OdpWarning). No network runs (no torch)."""
    from .codec import stream

    if whole:
        stream.verify(_data(data, "verify"))
    else:
        stream.read_stages(_data(data, "verify"), intact=True)


def model_info(name: str | None = None) -> ModelInfo:
    """An installed model by name (default: the one new files use); odp.ModelNotFound if it is missing
    or its weights file is damaged. No network is loaded."""
    from .codec import registry

    entry = registry.find(name or registry.DEFAULT_MODEL)
    return ModelInfo(entry.name, entry.sha256.hex(), entry.tokens, entry.codebook_size, entry.best_entropy.id)


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The largest image, in pixels, that encoding and decoding accept: `max_pixels` if given, else
    $ODP_MAX_PIXELS, else 2**28 (a decompression-bomb guard, docs/security.md)."""
    from .formats import container

    return container.pixel_limit(container.FROM_ENV if max_pixels is None else _count(max_pixels, "max_pixels"))


def model_of(data: bytes) -> ModelInfo:
    """The installed model a file needs, found by the weights hash in its header (odp.ModelNotFound
    names it when missing; odp.FormatError when the file does not fit it). Warns (odp.OdpWarning)
    when the file was cut short. No network is loaded. Of a file with refinement stages: its first
    stage's model."""
    from .codec import stream

    c, entry, _ = stream.open_container(_data(data, "model_of"), first_stage=True)
    return ModelInfo(entry.name, entry.sha256.hex(), entry.tokens, entry.codebook_size, c.header.entropy_model)


# -- files ------------------------------------------------------------------

def _write_atomic(dst: str | os.PathLike, overwrite: bool, write: Callable[[Any], None]) -> Path:
    from .formats.files import write_atomic

    try:
        return write_atomic(dst, write, overwrite)
    except FileExistsError:
        raise FileExistsError(f"{dst}: already exists (pass overwrite=True)") from None


def encode_file(src: str | os.PathLike, dst: str | os.PathLike | None = None, tokens: int | None = None,
                bytes: int | None = None, device: str = "auto", metadata: tuple[str, ...] = (),  # noqa: A002
                overwrite: bool = False) -> Path:
    """Encode an image file (anything Pillow opens) to `dst` (default: src with .odp); returns dst."""
    from PIL import Image

    from .codec.options import EncodeOptions

    options = EncodeOptions(tokens=tokens, bytes=bytes, device=device, metadata=metadata)  # checked before the work
    with Image.open(src) as im:
        data = encode(im, options=options)
    return _write_atomic(dst or Path(src).with_suffix(EXTENSION), overwrite, lambda f: f.write(data))


PNG_COMPRESS_LEVEL = 1


def save_decoded(im: Image.Image, f: Any, fmt: str = "PNG") -> None:
    """Write a decoded image to a file object as `odp decode` does: its ICC profile and EXIF kept, a PNG at
    zlib level 1 (a decoded photo's fine detail barely deflates: Pillow's default level 6 makes it about 5%
    smaller in three times the time)."""
    extra = {k: im.info[k] for k in ("icc_profile", "exif") if im.info.get(k)}
    if fmt == "PNG":
        extra["compress_level"] = PNG_COMPRESS_LEVEL
    im.save(f, format=fmt, **extra)


def decode_file(src: str | os.PathLike, dst: str | os.PathLike | None = None, tokens: int | None = None,
                device: str = "auto", overwrite: bool = False) -> Path:
    """Decode an .odp file to `dst` (default: src with .png), in the format its extension names; returns dst."""
    from PIL import Image

    dst = Path(dst or Path(src).with_suffix(".png"))
    Image.init()
    fmt = Image.EXTENSION.get(dst.suffix.lower())
    if fmt not in Image.SAVE:
        raise ValueError(f"{dst}: Pillow cannot write '{dst.suffix}' images")
    im = decode(Path(src).read_bytes(), tokens=tokens, device=device)
    return _write_atomic(dst, overwrite, lambda f: save_decoded(im, f, fmt))


def truncate_file(src: str | os.PathLike, dst: str | os.PathLike, tokens: int | None = None,
                  bytes: int | None = None, overwrite: bool = False) -> Path:  # noqa: A002
    """Write a shorter valid copy of an .odp file to `dst` (see truncate); returns dst."""
    data = truncate(Path(src).read_bytes(), tokens=tokens, bytes=bytes)
    return _write_atomic(dst, overwrite, lambda f: f.write(data))


def transcode(sources: Iterable[str | os.PathLike] | Any, out: str | os.PathLike, options: EncodeOptions | None = None,
              decode: bool = False, cluster: str = "local", force: bool = False, **kwargs: Any):
    """Encode (or `decode`) many files into the folder `out` on a Ray cluster (`pip install "odp[ray]"`),
    the files `odp encode`/`odp decode` would write, each atomically; returns a summary (counts, bytes,
    MP/s, each failure's line). `sources`: paths, or a Ray Dataset with a "path" column (and "bytes").
    `cluster`: "local" (Ray on this machine), "auto" (the running cluster) or an address. An input
    whose output is already there and valid is skipped (a rerun continues), unless `force`.
    Further keywords (threads, actors, files_per_batch, max_pixels, progress, on_failure): see
    odp.codec.distributed.transcode."""
    from .codec import distributed

    return distributed.transcode(sources, out, options=options, decode=decode, cluster=cluster, force=force, **kwargs)


def open_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """An input image file's bytes decoded whole, as `odp encode` reads its inputs: the pixel limit
    (`max_pixels`, else $ODP_MAX_PIXELS or 2**28) checked from the header before any pixel is decoded,
    and odp.InputError, one line naming `name`, for anything that is not a readable image."""
    from .codec.imaging import open_image as read

    return read(data, name, pixel_limit(max_pixels))


def register_pillow() -> None:
    """Register the .odp format with Pillow (the same as `import odp.formats.pillow`)."""
    from .formats import pillow

    pillow.register()
