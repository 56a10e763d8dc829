"""The base thumbnail of a version-4 file: the image shrunk and coded by a classic codec (Pillow's AVIF or
WebP), which the file's first stage of tokens refines (docs/format.md, "Version 4").

Below about 0.1 bpp a classic codec's small thumbnail, enlarged, is a faithful picture where the
tokenizer alone draws faded colours and blotches; the conditioned model then only adds what the
thumbnail misses (texture, edges). Its decoders are deterministic integer code, so every machine
shows the same base. No torch here.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..formats.container import BASE_CODECS, FormatError, Header, Reader, varint
from .quality import psnr

# Pillow's format name and encoder settings per base codec: those the refinement model was trained on
# (codec/training/configs/odp-refine-classic.toml); fast ones, the model learns their artefacts.
FORMATS = {"avif": ("AVIF", {"speed": 6}), "webp": ("WEBP", {"method": 4})}
# The chosen base is made once more with slower settings: at AVIF speed 5 a thumbnail's picture is better at the
# same bytes (docs/training.md, "The base's AVIF speed"). Only the winner: made so, the search's dozen files would
# take 3-4 times as long. Speed 5 writes the sequence header speed 6 does, so the file keeps the avif-frame form
# (speed 4 turns loop restoration on, a header that form does not rebuild: 25-35 bytes more, packed).
FINER = {"avif": {"speed": 5}}
FINER_REACH = 2  # qualities tried either side of the winner's at the finer settings
# The qualities searched. The models saw AVIF 0-50 and WebP 0-80 in training; AVIF goes on to 95 (100 is its lossless
# mode): past 50 a base is for budgets of about 0.3 bpp and more, where the cap left bytes unspent or took a WebP
# base; of the 13 held-out files it changed, all had a higher PSNR and 12 lower LPIPS-Alex and DISTS
# (docs/training.md, "AVIF bases above quality 50").
QUALITIES = {"avif": range(0, 96), "webp": range(0, 81)}
SHRINKS = (1, 2, 4, 8)
# Shrunk further, a thumbnail fits budgets where none of SHRINKS does (a 768x512 photo under about 130 bytes,
# 0.0027 bpp), whose file would otherwise hold tokens alone: the thumbnail-alone model draws it far better
# (docs/training.md, "The smallest budgets"). Only there: where one of SHRINKS fits, it is drawn better
# (LPIPS-Alex and DISTS), even where the further-shrunk one has the higher PSNR.
FALLBACK_SHRINKS = (16,)
LOWEST_SLACK = 0.9  # largest_within looks past the lowest quality for budgets down to this share of its file
CODE = {name: code for code, name in BASE_CODECS.items()}

# An AVIF base may be stored packed (codec "avif-packed": what the encoder wrote before the frame forms below,
# and their fallback): the boxes before its coded image (ftyp, meta and the mdat box's header: about 275
# bytes that differ between thumbnails only in sizes and a few fields) raw-deflated against AVIF_BOXES, to
# about 20 bytes; the coded image follows as it is. At 0.01 bpp of a 768x512 photo (491 bytes) those boxes
# would be half the budget. AVIF_BOXES is part of the format (docs/format.md): the boxes of one thumbnail as
# Pillow 13 (libavif) wrote them, frozen here for good; the frame forms rebuild them from it too.
AVIF_BOXES = bytes.fromhex(
    "00000020667479706176696600000000617669666d6966316d6961664d413142000000eb6d6574610000000000000021"
    "68646c72000000000000000070696374000000000000000000000000000000000e7069746d0000000000010000001e69"
    "6c6f630000000044000001000100000001000001130000012c0000002869696e660000000000010000001a696e666502"
    "0000000001000061763031436f6c6f72000000006a697072700000004b6970636f000000146973706500000000000000"
    "6000000040000000107069786900000000030808080000000c6176314381000c0000000013636f6c726e636c78000100"
    "0d0006800000001769706d61000000000000000100010401028304000001346d646174")
MAX_AVIF_BOXES = 1 << 16      # a packed base whose boxes inflate to more is refused (untrusted input)

# Smaller still, the frame forms ("avif-frame", "webp-frame"): a thumbnail's file less everything its size and
# length fix, rebuilt by the reader. For AVIF that is the boxes (AVIF_BOXES with the size, the coded image's
# length and the AV1 level written in), the AV1 temporal delimiter, the sequence header (AV1_SEQUENCE: sizes
# and level, the rest as libaom writes it for Pillow's settings) and the frame's OBU header: only the frame's
# own bytes are stored, about 35 bytes fewer than packed. For WebP, the RIFF and VP8 chunk headers and the
# VP8 key frame's start code and size: 27 bytes fewer. The encoder uses a frame form only where the rebuilt
# file is byte for byte the one Pillow wrote (else packed, else plain), so every stored form decodes alike.
AV1_SEQUENCE = "01101000100000001000011010000011010000"  # the sequence header's bits after the frame size
AV1_LEVELS = ((0, 147456, 2048, 1152), (1, 278784, 2816, 1584), (4, 665856, 4352, 2448),
              (5, 1065024, 5504, 3096), (8, 2359296, 6144, 3456), (12, 8912896, 8192, 4352),
              (16, 35651584, 16384, 8704))  # (seq_level_idx, largest picture, width, height): AV1 annex A
AV1_DELIMITER, AV1_SEQUENCE_OBU, AV1_FRAME_OBU = b"\x12\x00", 0x0A, 0x32  # OBU headers, sizes following
WEBP_MAX_SIDE = 16383         # what a VP8 key frame's 14-bit size fields hold
STORED = {"avif": ("avif-frame", "avif-packed"), "webp": ("webp-frame",)}  # the encoder's forms, smallest first
PICTURE = {"avif": "avif", "webp": "webp", "avif-packed": "avif", "avif-frame": "avif",
           "webp-frame": "webp"}  # the codec of each stored form's file


def _coded_image_start(data: bytes) -> int | None:
    """Where an AVIF file's mdat payload starts (its top-level boxes walked), or None."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"mdat":
            return pos + (16 if size == 1 else 8)
        if size < 8:
            return None
        pos += size
    return None


def _av1_level(size: tuple[int, int]) -> int:
    w, h = size
    for level, pixels, most_w, most_h in AV1_LEVELS:
        if w * h <= pixels and w <= most_w and h <= most_h:
            return level
    raise FormatError(f"base thumbnail of {w}x{h} pixels is too large for an AV1 frame")


def _av1_sequence_header(size: tuple[int, int], level: int) -> bytes:
    """The sequence header OBU's payload for a still picture of `size` (profile 0, reduced header)."""
    (w, h), wb, hb = size, max(1, (size[0] - 1).bit_length()), max(1, (size[1] - 1).bit_length())
    bits = f"00011{level:05b}{wb - 1:04b}{hb - 1:04b}{w - 1:0{wb}b}{h - 1:0{hb}b}{AV1_SEQUENCE}1"
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _avif_from_frame(frame: bytes, size: tuple[int, int]) -> bytes:
    """The AVIF file whose coded image is the AV1 frame OBU payload `frame` of a `size` picture."""
    if not frame:
        raise FormatError("base thumbnail's AV1 frame is empty: the file is corrupt")
    level = _av1_level(size)
    seq = _av1_sequence_header(size, level)
    coded = (AV1_DELIMITER + bytes([AV1_SEQUENCE_OBU]) + varint(len(seq)) + seq
             + bytes([AV1_FRAME_OBU]) + varint(len(frame)) + frame)
    boxes = bytearray(AVIF_BOXES)
    i = AVIF_BOXES.index(b"ispe") + 8                      # after its version and flags
    boxes[i:i + 8] = struct.pack(">II", *size)
    i = AVIF_BOXES.index(b"av1C") + 5                      # after the marker and version byte
    boxes[i] = level                                       # seq_profile 0 in the top 3 bits
    i = AVIF_BOXES.index(b"iinf") - 8                      # the iloc box's last field: the extent's length
    boxes[i:i + 4] = struct.pack(">I", len(coded))
    boxes[-8:-4] = struct.pack(">I", 8 + len(coded))       # the mdat box's size
    return bytes(boxes) + coded


def _webp_from_frame(frame: bytes, size: tuple[int, int]) -> bytes:
    """The WebP file whose VP8 key frame is `frame` (its 3-byte frame tag, then the data after its size)."""
    w, h = size
    if len(frame) < 4:
        raise FormatError("base thumbnail's VP8 frame is cut short: the file is corrupt")
    if max(w, h) > WEBP_MAX_SIDE:
        raise FormatError(f"base thumbnail of {w}x{h} pixels is too large for a WebP frame")
    vp8 = frame[:3] + b"\x9d\x01\x2a" + struct.pack("<HH", w, h) + frame[3:]
    chunk = b"VP8 " + struct.pack("<I", len(vp8)) + vp8 + bytes(len(vp8) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _stored_form(stored: str, data: bytes) -> bytes | None:
    """The bytes a stored form keeps of a codec's file, or None where the file is not laid out so."""
    if stored == "webp-frame":
        if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8 " or data[23:26] != b"\x9d\x01\x2a":
            return None
        return data[20:23] + data[30:20 + struct.unpack("<I", data[16:20])[0]]
    cut = _coded_image_start(data)
    if cut is None:
        return None
    if stored == "avif-packed":
        z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=AVIF_BOXES)
        return z.compress(data[:cut]) + z.flush() + data[cut:]
    obus = _obus(data, cut)
    if obus is None or [kind for kind, _ in obus] != [AV1_DELIMITER[0], AV1_SEQUENCE_OBU, AV1_FRAME_OBU]:
        return None
    return obus[2][1]


def _obus(data: bytes, pos: int) -> list[tuple[int, bytes]] | None:
    """(header byte, payload) of each AV1 OBU from `pos` to the end, each with its size field; None if not so."""
    r, out = Reader(data, "AV1 data", pos), []
    try:
        while r.pos < len(data):
            kind = r.u8()
            out.append((kind, r.take(r.varint(len(data), "an OBU size"))))
    except FormatError:
        return None
    return out


def pack(codec: str, data: bytes, size: tuple[int, int], forms: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """(stored codec, bytes): a codec's file of a `size` picture as a version-4 file holds it, in the first
    of `forms` (default STORED[codec], smallest first) that gives back exactly the same file, else as it is."""
    for stored in forms or STORED[codec]:
        kept = _stored_form(stored, data)
        try:
            if kept is not None and unpack(stored, kept, size) == data:
                return stored, kept
        except FormatError:
            pass
    return codec, data


def unpack(stored: str, data: bytes, size: tuple[int, int]) -> bytes:
    """The codec's own file from a stored base of a `size` picture (FormatError, one line, where a packed
    form is bad)."""
    if stored == "avif-frame":
        return _avif_from_frame(data, size)
    if stored == "webp-frame":
        return _webp_from_frame(data, size)
    if stored != "avif-packed":
        return data
    z = zlib.decompressobj(-15, zdict=AVIF_BOXES)
    try:
        boxes = z.decompress(data, MAX_AVIF_BOXES)
    except zlib.error as e:
        raise FormatError(f"base thumbnail's packed AVIF boxes do not inflate (the file is corrupt): {e}") from None
    if not z.eof:
        raise FormatError("base thumbnail's packed AVIF boxes are cut short or too large: the file is corrupt")
    return boxes + z.unused_data


def shrink(pixels: np.ndarray, factor: int) -> Image.Image:
    """The RGB image `pixels` shrunk `factor` times each side (Lanczos), as Header.base_size rounds."""
    h, w = pixels.shape[:2]
    im = Image.fromarray(pixels, "RGB")
    return im if factor == 1 else im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.LANCZOS)


def encode(small: Image.Image, codec: str, quality: int, finer: bool = False) -> bytes:
    """The codec's file of `small` at `quality`, with the search's settings or (finer) the FINER ones."""
    fmt, settings = FORMATS[codec]
    settings = {**settings, **FINER.get(codec, {})} if finer else settings
    buf = io.BytesIO()
    small.save(buf, fmt, quality=quality, **settings)
    return buf.getvalue()


def decode(data: bytes, codec: str, size: tuple[int, int], display: tuple[int, int]) -> np.ndarray:
    """A base thumbnail's pixels enlarged to `display` (uint8 RGB). FormatError (one line) unless the
    bytes are a `codec` file (stored form) of exactly `size` pixels: checked from its header, before
    decoding."""
    fmt = FORMATS[PICTURE[codec]][0]
    data = unpack(codec, data, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            if im.size != size:
                raise FormatError(f"base thumbnail is {im.size[0]}x{im.size[1]}, not the {size[0]}x{size[1]} "
                                  "its header says: the file is corrupt")
            im = im.convert("RGB")
    except FormatError:
        raise
    except Exception as e:  # Pillow raises many kinds for bad bytes
        raise FormatError(f"base thumbnail does not decode as {fmt} (the file is corrupt): {e}") from None
    return np.asarray(im if im.size == display else im.resize(display, Image.LANCZOS))


# The base's low band (docs/format.md, "Version 4"). The first stage's picture drifts from its base in the
# broad strokes (colour and brightness over a few pixels), where a base of a large share of the budget, coded for
# fidelity, is right: a file may take `w`/255 of the base's low band in place of the picture's own. The low band
# is a Gaussian blur of sigma 2 display pixels with these integer taps (sum 1024), edges mirrored: integer
# arithmetic, so every machine shows the same pixels.
LOW_BAND_TAPS = (2, 9, 28, 66, 124, 180, 206, 180, 124, 66, 28, 9, 2)
# The weight the encoder writes, by the base's shrink. On training photos at 0.02-0.2 bpp (docs/training.md,
# "The base's low band") the weight fitted per file by least squares ranged 169-255 on bases at full size and
# 49-255 at half size, and gave +0.43 and +0.15 dB with LPIPS-Alex and DISTS level; these fixed ones keep
# +0.42 and +0.14 dB without decoding the file once more to fit it (about 1 s of a 768x512 photo's encode).
# Smaller bases get none: too blurred to correct the picture (LPIPS-Alex rose).
LOW_BAND_WEIGHTS = {1: 224, 2: 192}
_LOW_BAND_ROWS = 256     # rows at a time: bounded memory on large photos
_LOW_BAND_UNIT = 255 * sum(LOW_BAND_TAPS) ** 2


def _mirrored(index: np.ndarray, n: int) -> np.ndarray:
    """Indices past either edge of 0..n-1 reflected back in (... 1 0 | 0 1 ... n-1 | n-1 n-2 ...)."""
    i = np.mod(index, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def with_low_band(picture: np.ndarray, base: np.ndarray, weight: int) -> np.ndarray:
    """The picture with weight/255 of its low band replaced by the base's (both H x W x 3 uint8, at the display
    size): picture + weight/255 * low band of (base - picture), rounded half up, clipped to 0..255. A strip of
    rows at a time; the low band in units of 1/1024**2 is exact in int32 (at most 255 * 1024**2)."""
    h, w = picture.shape[:2]
    r = len(LOW_BAND_TAPS) // 2
    cols = _mirrored(np.arange(-r, w + r), w)
    out = np.empty_like(picture)
    for y0 in range(0, h, _LOW_BAND_ROWS):
        y1 = min(h, y0 + _LOW_BAND_ROWS)
        rows = _mirrored(np.arange(y0 - r, y1 + r), h)
        d = (base[rows].astype(np.int32) - picture[rows])[:, cols]
        across = sum(t * d[:, k:k + w] for k, t in enumerate(LOW_BAND_TAPS))
        band = sum(t * across[k:k + y1 - y0] for k, t in enumerate(LOW_BAND_TAPS))
        step = (2 * weight * band.astype(np.int64) + _LOW_BAND_UNIT) // (2 * _LOW_BAND_UNIT)
        out[y0:y1] = np.clip(picture[y0:y1] + step, 0, 255)
    return out


def picture(h: Header) -> np.ndarray:
    """What a version-4 file's base shows, at the display size."""
    return decode(h.base, BASE_CODECS[h.base_codec], h.base_size, h.display_size)


@dataclass
class Base:
    """A base thumbnail the encoder chose: its codec, shrink, file and picture (display size)."""
    codec: str
    shrink: int
    data: bytes
    picture: np.ndarray

    @property
    def low_band(self) -> int:
        """The weight of its low band a file on it takes (LOW_BAND_WEIGHTS; 0: none)."""
        return LOW_BAND_WEIGHTS.get(self.shrink, 0)


class Candidates:
    """Every base codec at every shrink of one image; the files made while searching are kept, so
    several budgets share the work."""

    def __init__(self, pixels: np.ndarray, shrinks=SHRINKS, fallback=None):
        """`fallback`: the shrinks looked at where none of `shrinks` fits (None: FALLBACK_SHRINKS)."""
        self.pixels = pixels
        h, w = pixels.shape[:2]
        fallback = FALLBACK_SHRINKS if fallback is None else fallback
        self.smalls = {s: shrink(pixels, s) for s in (*shrinks, *fallback) if s == 1 or min(w, h) >= 4 * s}
        self.tiers = (tuple(shrinks), tuple(fallback))
        self.made: dict[tuple[str, int, int, bool], tuple[str, bytes]] = {}

    def file(self, codec: str, s: int, q: int, finer: bool = False) -> tuple[str, bytes]:
        """(stored codec, bytes) of the codec's file of the image shrunk s times at quality q (finer: with
        the FINER settings)."""
        if (codec, s, q, finer) not in self.made:
            self.made[codec, s, q, finer] = pack(codec, encode(self.smalls[s], codec, q, finer), self.smalls[s].size)
        return self.made[codec, s, q, finer]

    def largest_within(self, codec: str, s: int, max_bytes: int) -> int | None:
        """The highest quality in QUALITIES whose size is at most max_bytes (size grows
        with quality almost always; a bisection), or None. Not always at the lowest qualities: AVIF's
        qualities 0-2 make a file 2-7% larger than 3-5 (the 768x512 test photo, every shrink), so a budget
        just under the lowest quality's file looks a few qualities further."""
        qs = QUALITIES[codec]
        lo, hi = qs.start, qs.stop - 1
        lowest = len(self.file(codec, s, lo)[1])
        if lowest > max_bytes:
            if max_bytes < LOWEST_SLACK * lowest:
                return None
            for q in range(lo + 1, min(lo + 6, hi + 1)):
                size = len(self.file(codec, s, q)[1])
                if size <= max_bytes:
                    lo = q
                    break
                if size > lowest:  # growing already (WebP): nothing smaller follows
                    return None
            else:
                return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.file(codec, s, mid)[1]) <= max_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def best_within(self, max_bytes: int) -> Base | None:
        """Of each codec's and shrink's largest file within max_bytes, the one whose picture has the
        highest PSNR, made again with the FINER settings where that is better; the fallback shrinks only
        where none of the others fits; None when none fits."""
        best, score = None, -1.0
        for tier in self.tiers:
            for codec in FORMATS:
                for s in (s for s in tier if s in self.smalls):
                    q = self.largest_within(codec, s, max_bytes)
                    if q is None:
                        continue
                    p, base = self.scored(codec, s, q)
                    if p > score:
                        best, score, chosen = base, p, (codec, s, q)
            if best is not None:
                return self.finer(*chosen, max_bytes, best, score)
        return None

    def scored(self, codec: str, s: int, q: int, finer: bool = False) -> tuple[float, Base]:
        """(PSNR of its picture, Base) of a file `file` makes."""
        h, w = self.pixels.shape[:2]
        stored, data = self.file(codec, s, q, finer)
        pic = decode(data, stored, self.smalls[s].size, (w, h))
        return psnr(self.pixels, pic), Base(stored, s, data, pic)

    def finer(self, codec: str, s: int, q: int, max_bytes: int, base: Base, score: float) -> Base:
        """The search's winner (`base`, of quality q, PSNR `score`) or, where better by PSNR, the file with the
        FINER settings of the highest quality within FINER_REACH of q that fits max_bytes (sizes differ a little)."""
        if codec not in FINER:
            return base
        qs = QUALITIES[codec]
        lo, hi = max(q - FINER_REACH, qs.start), min(q + FINER_REACH, qs.stop - 1)
        fits = lambda q2: len(self.file(codec, s, q2, finer=True)[1]) <= max_bytes
        q2 = q
        if fits(q2):
            while q2 < hi and fits(q2 + 1):
                q2 += 1
        else:
            while q2 > lo and not fits(q2):
                q2 -= 1
            if not fits(q2):
                return base
        p, made = self.scored(codec, s, q2, finer=True)
        return made if p > score else base
