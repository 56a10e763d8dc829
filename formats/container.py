"""The .odp container: a checked header listing the truncation points, then payload layers.

Version 2 layout (full spec in docs/format.md):

    magic    4 bytes  b"\\x89ODP"
    version  u8       2
    varint   header length H
    H bytes  header fields, ending with the layer table (level, byte length, token check)
    u32      CRC32 of the version byte, H and the header fields
    layers   their bytes back to back

Layer i brings every tile from the token count of level L(i-1) to that of level L(i):
tile t keeps min(K, ceil(w_t * L / 255)) tokens at level L, w_t its allocation weight
(255 for every tile unless the encoder adapted the allocation). So keeping fewer tokens
is cutting layers off the end; layer lengths live in the checked header, so a file
shorter than they say was cut short and is read as its complete layers.

Version 3 is version 2 with refinement stages after the first stage's layers: the first stage's
header ends with how many follow, and each brings its own short header (kind, coded size, model,
allocation, layer table; CRC-checked) and layers. A stage refines the picture of the stages before
it, so a cut anywhere still decodes: in a stage's layers, to that stage at its complete layers; in
its header, to the stages before. A file without later stages is always written as version 2.

Version 4 is version 3 whose first stage starts from a classic codec's thumbnail (the base): the
first stage's header holds the thumbnail's bytes (AVIF or WebP) after the display size, and its
tokens are a conditioned model's, refining that thumbnail enlarged; it may have no layer at all (the
thumbnail alone). A cut inside the header (the thumbnail) leaves nothing to decode.

Version 1 files (8-byte magic, u32 lengths, CRC per chunk; every tile the same) are read
into the same structures, as layers without token checks; they are never written.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field, replace

MAGIC = b"\x89ODP"                  # both versions start so; v1 goes on with "\r\n\x1a\n"
MAGIC_V1 = b"\x89ODP\r\n\x1a\n"
VERSION = 2                 # a file of one stage
STAGED_VERSION = 3          # a file with refinement stages after the first
BASE_VERSION = 4            # a file whose first stage refines a classic codec's thumbnail (the base)
BASE_CODECS = {1: "avif", 2: "webp", 3: "avif-packed", 4: "avif-frame", 5: "webp-frame"}  # the base's codec and
                            # how it is stored, by its byte (docs/format.md; codec/thumbnail.py packs them)
MAX_BASE_SHRINK = 16        # the base is the image shrunk at most this many times each side
MAX_STAGES = 4              # stages in a file, the first included
STAGE_KINDS = {1: "refine"}  # a later stage's kind: 1 codes what the stages before missed, its model
                             # seeing their picture enlarged to its coded size (docs/format.md)
MIME_TYPE = "image/x-odp"
ZIP_MAGIC = b"PK\x03\x04"          # OpenDocument presentations share the .odp extension

# Entropy models by their byte in a version-2 header (docs/format.md keeps this table).
ENTROPY_MODELS = {1: "pos-freq-v1", 2: "ctx16-v1", 3: "ctx16-refine-v1", 4: "ctx16-refine-v2",
                  5: "ctx16d-v1", 6: "ctx16d-refine-v2", 7: "ctx16d-classic-v1"}

MAX_SIDE = 65535            # pixels per side the format can describe
MAX_HEADER = 16 << 20       # header bytes (dominated by ICC/EXIF)
MAX_METADATA = 8 << 20      # bytes per ICC profile or EXIF block
MAX_TOKENS = 4096           # tokens per tile
MAX_LAYER = 256 << 20       # bytes per payload layer
MAX_LEVEL = MAX_TOKENS * 255
DEFAULT_MAX_PIXELS = 1 << 28  # decompression-bomb guard: 268 MP (16384 x 16384)
MAX_PIXELS_ENV = "ODP_MAX_PIXELS"  # overrides DEFAULT_MAX_PIXELS for every reader in the process
FROM_ENV = -1               # max_pixels default: $ODP_MAX_PIXELS if set, else DEFAULT_MAX_PIXELS
MODEL_ID_BYTES = 4          # a version-2 file names its model by this prefix of the weights' sha256

FLAG_ICC, FLAG_EXIF, FLAG_WEIGHTS, FLAG_CAPS, FLAG_DISPLAY, FLAG_GRAY, FLAG_LOW_BAND = 1, 2, 4, 8, 16, 32, 64
FLAGS = FLAG_ICC | FLAG_EXIF | FLAG_WEIGHTS | FLAG_CAPS | FLAG_DISPLAY | FLAG_GRAY | FLAG_LOW_BAND
MAX_ENLARGE = 16            # a display side is at most this many times the coded side
MAX_REDUCE = 4              # ... and at least the coded side over this (an image coded enlarged)
_V1_FIXED = struct.Struct("<BBIIHHHH32s")  # version, flags, width, height, tile, tokens, kept, chunk_tokens, hash


class FormatError(ValueError):
    """The bytes are not a valid .odp file (one-line, user-facing message)."""


def pixel_limit(max_pixels: int | None = FROM_ENV) -> int | None:
    """Resolve a max_pixels argument: FROM_ENV reads $ODP_MAX_PIXELS (a positive integer), None is no limit.

    An environment variable lets a service lower the bomb guard for every entry point at once.
    """
    if max_pixels != FROM_ENV:
        return max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels")
    return int(raw)


@dataclass
class Header:
    width: int
    height: int
    tile: int
    tokens: int               # K: tokens per tile the model produces
    model_id: bytes           # sha256 of the weights file (v2 stores its first MODEL_ID_BYTES bytes)
    entropy_model: str
    weights: bytes = b""      # allocation weight 1..255 per tile; empty: every tile alike (255)
    caps: bytes = b""         # per tile 1..255: it keeps at most ceil(c * K / 255) tokens; empty: K
    icc: bytes = b""
    exif: bytes = b""
    display_width: int = 0    # size to show the image at, when the encoder coded it at another; 0: width
    display_height: int = 0
    model_name: str = ""      # version-1 files name their model too
    version: int = VERSION
    gray: bool = False        # the source was greyscale: decoders return one channel (the mean of R, G, B)
    kind: int = 0             # 0: the first stage; a later stage's STAGE_KINDS code
    stages_after: int = 0     # the first stage of a version-3 file: how many stages follow its layers
    base_codec: int = 0       # version 4: the base thumbnail's codec (BASE_CODECS); 0: no base
    base_shrink: int = 0      # ... the display size shrunk this many times each side (base_size)
    base: bytes = b""         # ... the thumbnail's file (AVIF or WebP bytes)
    base_low_band: int = 0    # ... 1..255: the first stage's picture takes this many 255ths of the base's
                              # low band in place of its own (codec/thumbnail.py, with_low_band); 0: none

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile)

    @property
    def tiles(self) -> int:
        return self.cols * self.rows

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the decoded image: the coded size, or the size it is enlarged or reduced to."""
        return (self.display_width or self.width, self.display_height or self.height)

    @property
    def base_size(self) -> tuple[int, int]:
        """(width, height) of the base thumbnail: the display size divided by base_shrink, rounded."""
        (w, h), s = self.display_size, self.base_shrink or 1
        return (max(1, round(w / s)), max(1, round(h / s)))

    @property
    def scaled(self) -> bool:
        return self.display_size != (self.width, self.height)

    @property
    def adaptive(self) -> bool:
        return bool(self.weights or self.caps)

    @property
    def limits(self) -> list[int]:
        """Most tokens each tile can keep: K, or its cap (the encoder found later tokens no help)."""
        if not self.caps:
            return [self.tokens] * self.tiles
        return [-(-c * self.tokens // 255) for c in self.caps]

    @property
    def full_level(self) -> int:
        """A level at which every tile has all the tokens it can keep, max ceil(m_t * 255 / w_t)
        (the highest a layer may have)."""
        if not self.weights:
            return max(self.limits)
        return max(-(-k * 255 // w) for k, w in zip(self.limits, self.weights))

    def counts(self, level: int) -> list[int]:
        """Tokens each tile keeps at `level`."""
        if not self.weights:
            return [min(k, level) for k in self.limits]
        return [min(k, -(-w * level // 255)) for k, w in zip(self.limits, self.weights)]

    def validate(self, max_pixels: int | None = FROM_ENV) -> None:
        max_pixels = pixel_limit(max_pixels)
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise FormatError(f"image size {self.width}x{self.height} is outside 1..{MAX_SIDE} pixels per side")
        dw, dh = self.display_size
        if not (-(-self.width // MAX_REDUCE) <= dw <= min(MAX_SIDE, MAX_ENLARGE * self.width)
                and -(-self.height // MAX_REDUCE) <= dh <= min(MAX_SIDE, MAX_ENLARGE * self.height)):
            raise FormatError(f"display size {dw}x{dh} is not between 1/{MAX_REDUCE} of the coded size "
                              f"{self.width}x{self.height} and {MAX_ENLARGE} times it (at most {MAX_SIDE} per side)")
        if max_pixels is not None and max(dw * dh, self.width * self.height) > max_pixels:
            w, h = max((dw, dh), (self.width, self.height), key=lambda s: s[0] * s[1])
            raise FormatError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
        if not (16 <= self.tile <= 4096) or self.tile & (self.tile - 1):
            raise FormatError(f"tile size {self.tile} is not a power of two in 16..4096")
        if not (1 <= self.tokens <= MAX_TOKENS):
            raise FormatError(f"tokens per tile {self.tokens} is outside 1..{MAX_TOKENS}")
        if len(self.model_id) != (32 if self.version == 1 else MODEL_ID_BYTES):
            raise FormatError("model id has the wrong length")
        if self.weights and (len(self.weights) != self.tiles or 0 in self.weights):
            raise FormatError(f"allocation weights must be {self.tiles} bytes (one per tile), each 1..255")
        if self.caps and (len(self.caps) != self.tiles or 0 in self.caps):
            raise FormatError(f"token caps must be {self.tiles} bytes (one per tile), each 1..255")
        for name, blob in (("ICC profile", self.icc), ("EXIF block", self.exif)):
            if len(blob) > MAX_METADATA:
                raise FormatError(f"{name} of {len(blob)} bytes exceeds {MAX_METADATA} bytes")
        if self.base_codec or self.base:
            if self.base_codec not in BASE_CODECS:
                raise FormatError(f"base thumbnail codec {self.base_codec} is unknown to this reader: "
                                  "the file needs a newer ODP")
            if not 1 <= self.base_shrink <= MAX_BASE_SHRINK:
                raise FormatError(f"base thumbnail shrink {self.base_shrink} is outside 1..{MAX_BASE_SHRINK}")
            if not 1 <= len(self.base) <= MAX_HEADER:
                raise FormatError(f"base thumbnail of {len(self.base)} bytes is outside 1..{MAX_HEADER}")
        if not 0 <= self.base_low_band <= 255 or (self.base_low_band and not self.base):
            raise FormatError(f"a base's low-band weight {self.base_low_band} needs a base thumbnail and 1..255")


@dataclass
class Layer:
    level: int                # the allocation level this layer brings every tile up to
    data: bytes
    check: int | None = None  # low 16 bits of CRC-32 of its decoded tokens (v2); v1 chunks are CRC'd as bytes


@dataclass
class Container:
    header: Header
    layers: list[Layer] = field(default_factory=list)
    complete: bool = True     # False when the file ended inside the payload (of any stage)
    declared_level: int = 0   # level of the last layer the header lists (even when cut short)
    stages: list["Container"] = field(default_factory=list)  # later stages that arrived with a layer
                              # or more, in order; each its own header (kind >= 1), layers and levels

    @property
    def level(self) -> int:
        """Level of the last complete layer (0 if none arrived)."""
        return self.layers[-1].level if self.layers else 0

    @property
    def kept(self) -> int:
        """Tokens of the tile that keeps most (for a uniform file: tokens per tile)."""
        return max(self.header.counts(self.level), default=0)

    @property
    def mean_tokens(self) -> float:
        return sum(self.header.counts(self.level)) / self.header.tiles

    @property
    def payload_bytes(self) -> int:
        return sum(len(layer.data) for layer in self.layers)


# --------------------------------------------------------------------------- writing


def varint(n: int) -> bytes:
    """LEB128: 7 bits a byte, low first (also the length fields of AV1 OBUs)."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def check_layers(h: Header, levels: list[int], lengths: list[int]) -> None:
    """The layer table rules (docs/format.md); quick even for a million tiles and thousands of layers.
    A first stage with a base thumbnail may have no layer."""
    if not levels and not h.base:
        raise FormatError("file has no layer of tokens")
    if len(levels) > h.tiles * h.tokens:
        raise FormatError(f"{len(levels)} layers cannot each add a token to {h.tiles} tiles of {h.tokens}")
    most: dict[int, int] = {}  # per weight, the largest cap: if any tile of that weight gains a token, it does
    for w, k in zip(h.weights or [255] * h.tiles, h.limits):
        most[w] = max(k, most.get(w, 0))
    distinct = sorted(most.items())
    top = min(MAX_LEVEL, h.full_level)
    prev = 0
    for i, (level, n) in enumerate(zip(levels, lengths)):
        if not prev < level <= top:
            raise FormatError(f"layer {i} has level {level}, not above {prev} and at most {top}")
        if all(min(k, -(-w * level // 255)) == min(k, -(-w * prev // 255)) for w, k in distinct):
            raise FormatError(f"layer {i} (level {level}) adds no token")
        if n > MAX_LAYER:
            raise FormatError(f"layer {i} declares {n} bytes, over the limit of {MAX_LAYER}")
        if n == 0 or n % 4:
            raise FormatError(f"layer {i} declares {n} bytes, not a positive whole number of 32-bit words")
        prev = level


def _model_fields(h: Header) -> list[bytes]:
    code = {v: k for k, v in ENTROPY_MODELS.items()}.get(h.entropy_model)
    if code is None:
        raise FormatError(f"entropy model {h.entropy_model!r} has no code in this format version")
    return [varint(h.width), varint(h.height), bytes([h.tile.bit_length() - 1]), varint(h.tokens),
            h.model_id, bytes([code])]


def _layer_table(layers: list[Layer]) -> list[bytes]:
    f, prev = [varint(len(layers))], 0
    for x in layers:
        if x.check is None:
            raise FormatError("every version-2 layer needs its token check")
        f += [varint(x.level - prev), varint(len(x.data) // 4), struct.pack("<H", x.check)]
        prev = x.level
    return f


def pack_header(h: Header, layers: list[Layer], stages_after: int = 0) -> bytes:
    """Version byte, length, fields and CRC: everything before the first layer's bytes (version 3,
    ending with `stages_after`, when later stages follow the layers; version 4 with a base thumbnail,
    always ending with `stages_after`)."""
    h.validate(max_pixels=None)
    if h.version not in (VERSION, STAGED_VERSION, BASE_VERSION) or h.kind:
        raise FormatError(f"only versions {VERSION} to {BASE_VERSION} are written, from a first stage")
    if not 0 <= stages_after < MAX_STAGES:
        raise FormatError(f"a file holds at most {MAX_STAGES} stages")
    check_layers(h, [x.level for x in layers], [len(x.data) for x in layers])
    flags = ((FLAG_ICC if h.icc else 0) | (FLAG_EXIF if h.exif else 0) | (FLAG_WEIGHTS if h.weights else 0)
             | (FLAG_CAPS if h.caps else 0) | (FLAG_DISPLAY if h.scaled else 0) | (FLAG_GRAY if h.gray else 0)
             | (FLAG_LOW_BAND if h.base_low_band else 0))
    f = [bytes([flags]), *_model_fields(h)]
    f += [varint(len(h.icc)), h.icc] if h.icc else []
    f += [varint(len(h.exif)), h.exif] if h.exif else []
    f += [h.weights, h.caps]
    f += [varint(h.display_size[0]), varint(h.display_size[1])] if h.scaled else []
    f += [bytes([h.base_codec, h.base_shrink]), varint(len(h.base)), h.base] if h.base else []
    f += [bytes([h.base_low_band])] if h.base_low_band else []
    f += _layer_table(layers)
    f += [varint(stages_after)] if stages_after or h.base else []
    fields = b"".join(f)
    version = BASE_VERSION if h.base else STAGED_VERSION if stages_after else VERSION
    head = bytes([version]) + varint(len(fields)) + fields
    return head + struct.pack("<I", zlib.crc32(head))


def base_framing(h: Header, base_bytes: int) -> int:
    """The bytes of a version-4 file with h's fields and no layers, less a base thumbnail of base_bytes:
    what a budget loses before its thumbnail (varints grow with the base, so pass an upper bound)."""
    n = min(max(1, base_bytes), MAX_HEADER)
    return len(MAGIC) + len(pack_header(replace(h, base=bytes(n)), [])) - n


def pack_stage_header(h: Header, layers: list[Layer]) -> bytes:
    """A later stage's header: length, fields (kind, flags, coded size, model, allocation, layer
    table) and the CRC of both; its display size is the image's, from the first stage."""
    h.validate(max_pixels=None)
    if h.kind not in STAGE_KINDS:
        raise FormatError(f"stage kind {h.kind} is unknown")
    check_layers(h, [x.level for x in layers], [len(x.data) for x in layers])
    flags = (FLAG_WEIGHTS if h.weights else 0) | (FLAG_CAPS if h.caps else 0)
    fields = b"".join([bytes([h.kind, flags]), *_model_fields(h), h.weights, h.caps, *_layer_table(layers)])
    head = varint(len(fields)) + fields
    return head + struct.pack("<I", zlib.crc32(head))


def write(c: Container) -> bytes:
    """Serialise a container: version 2, version 3 when it has later stages, version 4 with a base."""
    out = [MAGIC, pack_header(c.header, c.layers, len(c.stages))] + [x.data for x in c.layers]
    for stage in c.stages:
        out += [pack_stage_header(stage.header, stage.layers)] + [x.data for x in stage.layers]
    return b"".join(out)


# --------------------------------------------------------------------------- reading


class Reader:
    """Bounds-checked cursor over untrusted bytes."""

    def __init__(self, data: bytes, what: str, pos: int = 0):
        self.data, self.pos, self.what = data, pos, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"{self.what} is cut short")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self, limit: int, name: str) -> int:
        n = shift = 0
        for _ in range(5):
            b = self.u8()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if n > limit:
                    raise FormatError(f"{self.what} declares {name} {n}, over the limit of {limit}")
                return n
        raise FormatError(f"{self.what} holds a malformed number ({name})")

    def string(self) -> str:
        try:
            return self.take(self.u8()).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.what} holds a name that is not UTF-8") from None

    def blob(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise FormatError(f"{self.what} declares a block of {n} bytes, over the limit of {limit}")
        return self.take(n)


def is_odp(prefix: bytes) -> bool:
    """Whether bytes start like an .odp file of a version this reader knows."""
    return (prefix[:len(MAGIC_V1)] == MAGIC_V1
            or prefix[:len(MAGIC) + 1] in (MAGIC + bytes([v]) for v in (VERSION, STAGED_VERSION, BASE_VERSION)))


def header_size(prefix: bytes) -> int | None:
    """Bytes up to the first layer, from a file's first 16 bytes (None: not an .odp file)."""
    if not is_odp(prefix):
        return None
    r = Reader(prefix, "file header")
    if prefix.startswith(MAGIC_V1):
        r.pos = len(MAGIC_V1)
        n = r.u32()
        if n > MAX_HEADER:
            raise FormatError(f"header declares {n} bytes, over the limit of {MAX_HEADER}")
        return r.pos + n + 4
    r.pos = len(MAGIC) + 1
    n = r.varint(MAX_HEADER, "a header length")
    return r.pos + n + 4


def read_header(data: bytes, max_pixels: int | None = FROM_ENV) -> tuple[Header, list[tuple[int, int, int | None]], int]:
    """Parse and check the header -> (header, [(level, byte length, check)] per layer, offset of the first layer)."""
    if not is_odp(data):
        if data.startswith(MAGIC) and len(data) > len(MAGIC):
            raise FormatError(f"ODP format version {data[4]} is not supported "
                              f"(this reader knows versions 1 to {BASE_VERSION})")
        if data.startswith(ZIP_MAGIC):
            raise FormatError("not an ODP image: a zip file, such as an OpenDocument presentation (also .odp)")
        raise FormatError("not an ODP file (wrong magic bytes)")
    if data.startswith(MAGIC_V1):
        return _read_v1(data, max_pixels)
    r = Reader(data, "file header", len(MAGIC) + 1)
    n = r.varint(MAX_HEADER, "a header length")
    if len(data) < r.pos + n + 4:
        holds = ", which holds its base thumbnail" if data[len(MAGIC)] == BASE_VERSION else ""
        raise FormatError(f"file is cut short inside its header{holds} ({len(data)} of {r.pos + n + 4} bytes): "
                          "nothing to decode")
    fields = r.take(n)
    if r.u32() != zlib.crc32(data[len(MAGIC):r.pos - 4]):
        raise FormatError("header checksum mismatch: the file is corrupt")
    f = Reader(fields, "header")
    flags = f.u8()
    if flags & ~FLAGS:
        raise FormatError(f"header has unknown flags {flags:#04x}")
    w, hgt, tile, tokens, model_id, entropy_model = _read_model_fields(f)
    icc = f.take(f.varint(MAX_METADATA, "an ICC profile size")) if flags & FLAG_ICC else b""
    exif = f.take(f.varint(MAX_METADATA, "an EXIF block size")) if flags & FLAG_EXIF else b""
    h = Header(w, hgt, tile, tokens, model_id, entropy_model, icc=icc, exif=exif,
               gray=bool(flags & FLAG_GRAY))
    h.validate(max_pixels)
    if flags & FLAG_WEIGHTS:
        h.weights = f.take(h.tiles)
    if flags & FLAG_CAPS:
        h.caps = f.take(h.tiles)
    if flags & FLAG_DISPLAY:
        h.display_width, h.display_height = f.varint(MAX_SIDE, "a display width"), f.varint(MAX_SIDE, "a display height")
    h.validate(max_pixels)
    version = data[len(MAGIC)]
    if version == BASE_VERSION:
        h.base_codec, h.base_shrink = f.u8(), f.u8()
        h.base = f.take(f.varint(MAX_HEADER, "a base thumbnail size"))
        if not h.base:
            raise FormatError("a version-4 file has an empty base thumbnail")
        if flags & FLAG_LOW_BAND:
            h.base_low_band = f.u8()
            if not h.base_low_band:
                raise FormatError("a base's low-band weight is 0 (the flag says one follows: 1..255)")
        h.validate(max_pixels)
    elif flags & FLAG_LOW_BAND:
        raise FormatError("header has the base low-band flag but no base thumbnail (version 4 only)")
    layers = _read_layer_table(f)
    if version in (STAGED_VERSION, BASE_VERSION):
        h.version, h.stages_after = version, f.varint(MAX_STAGES - 1, "a stage count")
        if version == STAGED_VERSION and not h.stages_after:
            raise FormatError("a version-3 file declares no stage after the first")
    if f.pos != len(fields):
        raise FormatError("header has trailing bytes")
    check_layers(h, [x[0] for x in layers], [x[1] for x in layers])
    return h, layers, r.pos


def _read_model_fields(f: Reader) -> tuple[int, int, int, int, bytes, str]:
    """(width, height, tile, tokens, model id, entropy model): what _model_fields wrote."""
    w, hgt = f.varint(MAX_SIDE, "a width"), f.varint(MAX_SIDE, "a height")
    log_tile = f.u8()
    if not 4 <= log_tile <= 12:
        raise FormatError(f"tile size 2^{log_tile} is outside 16..4096")
    tokens = f.varint(MAX_TOKENS, "tokens per tile")
    model_id, code = f.take(MODEL_ID_BYTES), f.u8()
    if code not in ENTROPY_MODELS:
        raise FormatError(f"entropy model code {code} is unknown to this reader: the file needs a newer ODP")
    return w, hgt, 1 << log_tile, tokens, model_id, ENTROPY_MODELS[code]


def _read_layer_table(f: Reader) -> list[tuple[int, int, int]]:
    count = f.varint(MAX_LEVEL, "a layer count")
    layers, level = [], 0
    for _ in range(count):
        level += f.varint(MAX_LEVEL, "a level step")
        length = 4 * f.varint(MAX_LAYER // 4, "a layer length")
        layers.append((level, length, struct.unpack("<H", f.take(2))[0]))
    return layers


def _read_stage_header(data: bytes, pos: int, first: Header,
                       max_pixels) -> tuple[Header, list[tuple[int, int, int]], int] | None:
    """A later stage's header at `pos` -> (header, layer table, offset of its first layer), or None
    when the file ends before the header does (a download cut there: the stage did not arrive)."""
    r = Reader(data, "stage header", pos)
    try:
        n = r.varint(MAX_HEADER, "a stage header length")
    except FormatError:
        if len(data) - pos < 5:  # the length itself is cut short
            return None
        raise
    if len(data) - r.pos < n + 4:
        return None
    fields = r.take(n)
    if r.u32() != zlib.crc32(data[pos:r.pos - 4]):
        raise FormatError("stage header checksum mismatch: the file is corrupt")
    f = Reader(fields, "stage header")
    kind, flags = f.u8(), f.u8()
    if kind not in STAGE_KINDS:
        raise FormatError(f"stage kind {kind} is unknown to this reader")
    if flags & ~(FLAG_WEIGHTS | FLAG_CAPS):
        raise FormatError(f"stage header has unknown flags {flags:#04x}")
    w, hgt, tile, tokens, model_id, entropy_model = _read_model_fields(f)
    dw, dh = first.display_size
    h = Header(w, hgt, tile, tokens, model_id, entropy_model, display_width=dw,
               display_height=dh, version=STAGED_VERSION, gray=first.gray, kind=kind)
    h.validate(max_pixels)
    if flags & FLAG_WEIGHTS:
        h.weights = f.take(h.tiles)
    if flags & FLAG_CAPS:
        h.caps = f.take(h.tiles)
    h.validate(max_pixels)
    layers = _read_layer_table(f)
    if f.pos != len(fields):
        raise FormatError("stage header has trailing bytes")
    check_layers(h, [x[0] for x in layers], [x[1] for x in layers])
    return h, layers, r.pos


def _read_v1(data: bytes, max_pixels) -> tuple[Header, list[tuple[int, int, int | None]], int]:
    r = Reader(data, "file header", len(MAGIC_V1))
    n = r.u32()
    if n > MAX_HEADER:
        raise FormatError(f"header declares {n} bytes, over the limit of {MAX_HEADER}")
    head = r.take(n)
    if r.u32() != zlib.crc32(head):
        raise FormatError("header checksum mismatch: the file is corrupt")
    f = Reader(head, "header")
    version, _flags, w, hgt, tile, tokens, kept, g, whash = f.unpack(_V1_FIXED)
    if version != 1:
        raise FormatError(f"ODP format version {version} is not supported (this reader knows versions 1 to {BASE_VERSION})")
    model_name, entropy_model = f.string(), f.string()
    icc, exif = f.blob(MAX_METADATA), f.blob(MAX_METADATA)
    h = Header(w, hgt, tile, tokens, whash, entropy_model, icc=icc, exif=exif, model_name=model_name, version=1)
    h.validate(max_pixels)
    if not (1 <= kept <= tokens and 1 <= g <= tokens):
        raise FormatError(f"kept tokens {kept} or chunk size {g} is outside 1..{tokens}")
    count = -(-kept // g)
    lengths = list(struct.unpack(f"<{count}I", f.take(4 * count)))
    if f.pos != len(head):
        raise FormatError("header has trailing bytes")
    levels = [min((i + 1) * g, kept) for i in range(count)]
    check_layers(h, levels, lengths)
    return h, [(lv, n + 4, None) for lv, n in zip(levels, lengths)], r.pos  # +4: each chunk's CRC


def _read_layers(data: bytes, h: Header, table, pos: int) -> tuple[Container, int]:
    """The layers of one stage from `pos` -> (its container, offset after them); complete=False when
    the file ends inside them (those that arrived whole are kept)."""
    r = Reader(data, "payload", pos)
    layers: list[Layer] = []
    declared = table[-1][0] if table else 0
    for i, (level, n, check) in enumerate(table):
        if len(data) - r.pos < n:
            return Container(h, layers, complete=False, declared_level=declared), len(data)
        chunk = r.take(n)
        if check is None:  # v1: bytes then their CRC
            chunk, crc = chunk[:-4], struct.unpack("<I", chunk[-4:])[0]
            if crc != zlib.crc32(chunk):
                raise FormatError(f"payload chunk {i} checksum mismatch: the file is corrupt")
        layers.append(Layer(level, chunk, check))
    return Container(h, layers, declared_level=declared), r.pos


def read(data: bytes, max_pixels: int | None = FROM_ENV) -> Container:
    """Parse a whole file. Corrupt layers raise; a cut-short payload is kept as far as it goes (a
    later stage with no complete layer is left out, and the file is marked incomplete)."""
    h, table, pos = read_header(data, max_pixels)
    c, pos = _read_layers(data, h, table, pos)
    for _ in range(h.stages_after if c.complete else 0):
        got = _read_stage_header(data, pos, h, max_pixels)
        if got is None:
            c.complete = False
            return c
        stage, pos = _read_layers(data, *got)
        if stage.layers:
            c.stages.append(stage)
        if not stage.complete:
            c.complete = False
            return c
    if pos != len(data):
        raise FormatError(f"{len(data) - pos} unexpected bytes after the last layer")
    return c
