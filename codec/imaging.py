"""Pixels in and out: any Pillow image to the 8-bit RGB array ODP codes, resizing, the pixel limit.

No torch: the encoder, the bench and the TUI all start from `prepare`.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ..formats import container
from .errors import InputError, OdpWarning, one_line, printable
from .workers import bands, run_all

METADATA = ("icc", "exif")
# the image files that folder-wide commands (bench, training, the TUI) pick up
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".avif"})


@dataclass
class Prepared:
    pixels: np.ndarray   # (H, W, 3) uint8 sRGB-or-as-tagged
    icc: bytes
    exif: bytes
    gray: bool = False   # every pixel has R = G = B: the file says so and decodes to one channel


def prepare(im: Image.Image, keep: tuple[str, ...] = ()) -> Prepared:
    """Any Pillow image -> 8-bit RGB pixels, EXIF orientation applied.

    ODP makes small files, so metadata is dropped unless `keep` names it ("icc", "exif"),
    as cwebp does: an ICC profile or EXIF block can outweigh the whole image. A dropped
    ICC profile is first applied (pixels converted to sRGB), so colours stay right.
    Alpha is not coded: transparent images are flattened onto white, with a warning.
    16/32-bit greyscale is scaled to 8 bits rather than clipped. An image whose pixels all have
    R = G = B (any greyscale mode, or grey RGB) is marked grey, so that it decodes grey.
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

    clear = colour_key(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)  # integers: a float64 copy would take 8 bytes per pixel of a huge scan
        top = 65535 if im.mode.startswith("I;16") or a.max() > 255 else 255
        a = np.clip(a, 0, top).astype(np.uint32)
        im = Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8), "L")  # rounds as before: no ties
    elif im.mode == "F":
        im = Image.fromarray(float_to_8bit(np.asarray(im)), "L")
    if clear is not None:  # what the colour key hid shows as the flattened background: white
        warnings.warn("alpha channel dropped: transparent pixels were flattened onto white", OdpWarning)
        a = np.array(im.convert("L"))
        a[clear] = 255
        im = Image.fromarray(a, "L")
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
    pixels = rgb_array(im)
    return Prepared(pixels, icc, exif_bytes if "exif" in keep else b"", is_gray(pixels))


def is_gray(pixels: np.ndarray, rows: int = 256) -> bool:
    """Whether every pixel has R = G = B (a strip at a time: no full-size temporary)."""
    for y in range(0, pixels.shape[0], rows):
        s = pixels[y:y + rows]
        if not ((s[..., 0] == s[..., 1]).all() and (s[..., 1] == s[..., 2]).all()):
            return False
    return True


def gray_of(pixels: np.ndarray) -> np.ndarray:
    """Decoded (H, W, 3) uint8 of a greyscale file -> (H, W) uint8: the rounded mean of R, G, B
    (docs/format.md, flag bit 5)."""
    return ((pixels.astype(np.uint16).sum(2) + 1) // 3).astype(np.uint8)


def colour_key(im: Image.Image) -> np.ndarray | None:
    """The pixels a colour key (PNG tRNS) makes transparent in a 1-bit or 16/32-bit greyscale image,
    which Pillow cannot convert to RGBA with it; None when it hides none (or there is none)."""
    key = im.info.get("transparency")
    if im.mode not in ("1", "I", "I;16", "I;16B", "I;16L", "I;16N") or not isinstance(key, int):
        return None
    mask = (np.asarray(im.convert("L")) if im.mode == "1" else np.asarray(im)) == key
    return mask if mask.any() else None


def float_to_8bit(a: np.ndarray) -> np.ndarray:
    """A floating-point image to 0..255: values in 0..1 are taken as fractions of white, values in
    0..255 as they are; any other range (scientific TIFFs, around -3..3) is stretched from its least
    to its greatest value, with a warning, rather than clipped to black."""
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
    a = np.where(finite, a, lo)
    if lo >= 0 and hi <= 1:
        a = a * 255
    elif not (lo >= 0 and hi <= 255):
        warnings.warn(f"floating-point values {lo:.3g}..{hi:.3g} were scaled to 0..255", OdpWarning)
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


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


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> the same picture at size (width, height), Lanczos."""
    if size == (pixels.shape[1], pixels.shape[0]):
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").resize(size, Image.LANCZOS))


def _cubic_weights(scale: int) -> np.ndarray:
    """(scale, 4) weights of bicubic enlargement by an integer `scale` along one axis: Keys' kernel with
    a = -0.75 and half-pixel centres (PyTorch's `bicubic`, align_corners=False). Output pixel i * scale + p
    takes source pixels i - 1 .. i + 2 shifted by `_first_tap(p, scale)`, with these weights."""
    a = -0.75
    src = (np.arange(scale) + 0.5) / scale - 0.5
    t = (src - np.floor(src))[:, None]
    d = np.concatenate([t + 1, t, 1 - t, 2 - t], axis=1)           # distance to each of the 4 taps
    near = ((a + 2) * d - (a + 3)) * d * d + 1                      # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a                 # 1 < |d| < 2
    return np.where(d <= 1, near, far).astype(np.float32)


def _first_tap(p: int, scale: int) -> int:
    return int(np.floor((p + 0.5) / scale - 0.5)) - 1


def _enlarge_axis(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """float32 x enlarged `scale` times along `axis`; edge pixels repeat past the border (torch clamps)."""
    n, weights = x.shape[axis], _cubic_weights(scale)
    padded = np.pad(x, [(2, 2) if a == axis else (0, 0) for a in range(x.ndim)], mode="edge")
    shape = list(x.shape)
    shape[axis] = n * scale
    out = np.empty(shape, np.float32)
    acc, term = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)  # reused: no temporaries
    window = [slice(None)] * x.ndim
    for p in range(scale):  # the outputs of one phase share their weights: sums of shifted views
        first = _first_tap(p, scale) + 2  # + 2: the padding
        for k in range(4):
            window[axis] = slice(first + k, first + k + n)
            np.multiply(padded[tuple(window)], weights[p, k], out=term if k else acc)
            if k:
                np.add(acc, term, out=acc)
        window[axis] = slice(p, None, scale)
        out[tuple(window)] = acc
    return out


def enlarge_bicubic(pixels: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (scale H, scale W, 3) uint8, enlarged as a refinement stage's model was
    trained to see the picture so far (torch's bicubic on the same values, within one level)."""
    x = pixels.astype(np.float32)
    # each pass cut across the other axis into bands, one per worker thread: the same values
    tall = np.concatenate(run_all(lambda b: _enlarge_axis(x[:, b], scale, 0), bands(x.shape[1])), 1)
    out = np.concatenate(run_all(lambda b: _enlarge_axis(tall[b], scale, 1), bands(tall.shape[0])), 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """The size an image is coded at: 1/scale of each side, rounded, but never less than the format's
    1/16 (container.MAX_ENLARGE) allows."""
    least = container.MAX_ENLARGE
    return max(-(-width // least), round(width / scale)), max(-(-height // least), round(height / scale))


def check_pixels(width: int, height: int, max_pixels: int | None = container.FROM_ENV) -> None:
    """Refuse an input image over the pixel limit before any of its pixels is decoded (bomb guard)."""
    limit = container.pixel_limit(max_pixels)
    if limit is not None and width * height > limit:
        raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {limit} pixels")


@contextmanager
def _library_stderr():
    """Capture what C libraries (libtiff above all) write straight to file descriptor 2 while Pillow
    reads, so that a damaged file still gives one line; yields a function giving the lines so far."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        def said() -> list[str]:
            tmp.seek(0)
            return [x.strip() for x in tmp.read().decode("utf-8", "replace").splitlines() if x.strip()]

        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def open_image(raw: bytes, name: str, limit: int | None) -> Image.Image:
    """An input image file's bytes decoded whole, or an InputError of one line naming it: the pixel
    limit checked from its header before any pixel is decoded, a damaged file named by its format
    with the reason its decoder gave. (Pillow's own bomb guard is the caller's to lift.)"""
    from PIL import UnidentifiedImageError

    with _library_stderr() as said:
        try:
            im = Image.open(io.BytesIO(raw))
        except UnidentifiedImageError:
            raise InputError(f"{name}: not an image Pillow can read") from None
        except Exception as e:  # a header Pillow recognises but cannot parse
            raise InputError(f"{name}: damaged image file: {printable(_reason(e, said()))}") from None
        if limit is not None and im.width * im.height > limit:
            raise InputError(f"{name}: image of {im.width}x{im.height} pixels exceeds the limit of {limit} pixels")
        try:
            im.load()
        except MemoryError:
            raise InputError(f"{name}: out of memory") from None
        except Exception as e:
            raise InputError(f"{name}: damaged {im.format or 'image'} file: {printable(_reason(e, said()))}") from None
    return im


def _reason(e: Exception, said: list[str]) -> str:
    """The decoder's own words: Pillow's message, or what libtiff/libjpeg printed when Pillow says only
    'decoder error -2'; never a Python exception name."""
    errors = [x for x in said if "warning" not in x.lower()]
    text = str(e).splitlines()[0] if str(e) else ""
    if errors and (not text or "decoder error" in text):
        return errors[-1]
    if isinstance(e, (OSError, ValueError, SyntaxError)) and text:
        return one_line(e)
    return "image file is truncated or malformed"
