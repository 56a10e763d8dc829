"""ODP: a learned image codec whose quality is chosen after encoding, by cutting the file shorter.

The public API (docs/api.md):

    data = odp.encode(image, tokens=None, bytes=None)   # PIL image, numpy array or torch tensor -> .odp bytes
    image = odp.decode(data, tokens=None)               # -> PIL.Image (RGB)
    small = odp.truncate(data, tokens=32)               # a shorter valid file; no network runs
    odp.info(data)                                      # -> odp.Info
    odp.encode_batch(images)                            # tiles of many images batched through the network
    odp.encode_file / decode_file / truncate_file       # paths in, outputs written atomically
    odp.register_pillow()                               # Image.open / save of .odp files

`import odp` is cheap: torch, numpy and Pillow are imported by the functions that need them.
"""
from __future__ import annotations

import numbers
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

    ImageLike = Image.Image | np.ndarray | torch.Tensor

__version__ = "0.1.0"
MIME_TYPE = "image/x-odp"
EXTENSION = ".odp"

__all__ = ["encode", "decode", "truncate", "info", "Info", "encode_batch", "encode_file", "decode_file",
           "truncate_file", "register_pillow", "FormatError", "ModelNotFound", "OdpWarning", "MIME_TYPE",
           "EXTENSION", "__version__"]

_LAZY = {"FormatError": ("odp.formats.container", "FormatError"),
         "ModelNotFound": ("odp.codec.weights", "ModelNotFound"),
         "OdpWarning": ("odp.codec.pipeline", "OdpWarning")}


def __getattr__(name: str) -> Any:
    """The exception and warning classes, imported on first use (ModelNotFound and OdpWarning import torch)."""
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


def _data(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, os.PathLike)):
        raise TypeError(f"{what}() takes the bytes of an .odp file, not a path: use odp.{what}_file() "
                        f"or Path(...).read_bytes()")
    raise TypeError(f"{what}() takes bytes, not {type(data).__name__}")


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return int(value)


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


def encode(image: ImageLike, tokens: int | None = None, bytes: int | None = None, device: str = "auto",
           metadata: tuple[str, ...] = (), quality: float | None = None, psnr: float | None = None,
           msssim: float | None = None, adaptive: bool = True,
           scale: int | str = "auto") -> bytes:  # noqa: A002  (bytes= as --bytes)
    """Encode an image to .odp bytes: all tokens, the first `tokens` per tile, the largest file within
    `bytes`, a `quality` 1..100 (a budget from 0.002 to 0.08 bpp, as `odp encode --quality`), or the
    smallest file whose decoded image reaches `psnr` (dB) or `msssim`; give at most one of these.

    `image`: a PIL image (any mode; alpha is flattened onto white), a numpy uint8 array H×W×3 (RGB),
    H×W×4 (RGBA) or H×W (grey), or a torch tensor 3×H×W / 1×H×W / H×W, float in [0, 1] or uint8.
    `device`: "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"; the file is the same format either way.
    `metadata`: what to carry from a PIL image ("icc", "exif"); by default none (colours converted to sRGB).
    `adaptive`: tiles get tokens by need (`tokens` is then a mean); False gives every tile the same
    number, encoding several times faster.
    `scale`: code the image at 1/scale of each side (1..16), enlarged back when decoded; "auto" (the
    default): full size unless `bytes` cannot hold 1 token per tile; "psnr": the coding scale of
    highest PSNR within `bytes`/`quality`, or the smallest file reaching `psnr`/`msssim` (docs/api.md).
    """
    from .codec import pipeline

    tokens, budget = _count(tokens, "tokens"), _count(bytes, "bytes")
    scale = scale if isinstance(scale, str) else _count(scale, "scale")
    if sum(x is not None for x in (tokens, budget, quality, psnr, msssim)) > 1:
        raise ValueError("give at most one of tokens, bytes, quality, psnr, msssim")
    target = ("psnr", psnr) if psnr is not None else ("ms-ssim", msssim) if msssim is not None else None
    return pipeline.encode(_to_pil(image), tokens=tokens, max_bytes=budget, device=device, metadata=tuple(metadata),
                           quality=quality, target=target, adaptive=adaptive, scale=scale)


def encode_batch(images: Iterable[ImageLike], tokens: int | None = None, bytes: int | None = None,
                 device: str = "auto", batch: int | None = None) -> list[bytes]:  # noqa: A002
    """Encode many images, their tiles batched together through the network (a real gain on a GPU).

    Takes the same image kinds as encode() and returns one .odp file per image, in order. `batch` is
    tiles per network call (default 64 on CUDA, 4 on CPU). A batch mixing images can round a token
    differently from encode() alone (float rounding under another batch shape); every file is valid.
    """
    from .codec import pipeline

    tokens, budget, batch = _count(tokens, "tokens"), _count(bytes, "bytes"), _count(batch, "batch")
    if tokens is not None and budget is not None:
        raise ValueError("give tokens or bytes, not both")
    ims = [_to_pil(im) for im in images]
    return pipeline.encode_many(ims, tokens=tokens, max_bytes=budget, device=device, batch=batch)


def decode(data: bytes, tokens: int | None = None, device: str = "auto") -> Image.Image:
    """Decode .odp bytes to an RGB PIL image, using at most `tokens` tokens per tile.

    A file cut short decodes from its complete layers, with an odp.OdpWarning. The model is found by the
    weights hash in the file; odp.ModelNotFound names it when it is not installed.
    """
    from .codec import pipeline

    return pipeline.decode(_data(data, "decode"), tokens=_count(tokens, "tokens"), device=device)


def truncate(data: bytes, tokens: int | None = None, bytes: int | None = None) -> bytes:  # noqa: A002
    """A shorter valid .odp file keeping `tokens` per tile, or the most tokens that fit `bytes` (give one).

    No neural network runs: whole layers are cut, only a partial last one is re-coded.
    """
    from .codec import pipeline

    tokens, budget = _count(tokens, "tokens"), _count(bytes, "bytes")
    if (tokens is None) == (budget is None):
        raise ValueError("give exactly one of tokens or bytes")
    return pipeline.truncate(_data(data, "truncate"), tokens=tokens, max_bytes=budget)


def info(data: bytes) -> Info:
    """Describe an .odp file from its header (raises odp.FormatError if it is not a valid one)."""
    from .formats import container

    raw = _data(data, "info")
    c = container.read(raw)
    h = c.header
    payload = c.payload_bytes
    n = sum(h.counts(c.level))
    width, height = h.display_size
    return Info(width, height, h.tile, h.cols, h.rows, h.tiles, c.kept, max(h.counts(c.declared_level)),
                h.tokens, c.complete, len(raw), payload, len(raw) * 8 / (width * height),
                payload * 8 / n if n else 0.0, h.model_name, h.model_id.hex(), h.entropy_model, len(h.icc),
                len(h.exif), c.mean_tokens, h.adaptive, len(c.layers), h.version, h.width, h.height)


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

    with Image.open(src) as im:
        data = encode(im, tokens=tokens, bytes=bytes, device=device, metadata=metadata)
    return _write_atomic(dst or Path(src).with_suffix(EXTENSION), overwrite, lambda f: f.write(data))


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
    extra = {k: im.info[k] for k in ("icc_profile", "exif") if im.info.get(k)}
    return _write_atomic(dst, overwrite, lambda f: im.save(f, format=fmt, **extra))


def truncate_file(src: str | os.PathLike, dst: str | os.PathLike, tokens: int | None = None,
                  bytes: int | None = None, overwrite: bool = False) -> Path:  # noqa: A002
    """Write a shorter valid copy of an .odp file to `dst` (see truncate); returns dst."""
    data = truncate(Path(src).read_bytes(), tokens=tokens, bytes=bytes)
    return _write_atomic(dst, overwrite, lambda f: f.write(data))


def register_pillow() -> None:
    """Register the .odp format with Pillow (the same as `import odp.formats.pillow`)."""
    from .formats import pillow

    pillow.register()
