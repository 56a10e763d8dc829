"""The .odp container: layout, validation, corruption and truncation of version 2; reading version 1.

No neural network runs here (the real files come from session fixtures)."""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import helpers
from odp.formats import container
from odp.formats.container import (DEFAULT_MAX_PIXELS, ENTROPY_MODELS, MAGIC, MAGIC_V1, MAX_HEADER, MAX_LAYER,
                                   MAX_LEVEL, MAX_METADATA, MAX_PIXELS_ENV, MAX_SIDE, MAX_TOKENS, Container,
                                   FormatError, Header, Layer)

ONE_LINE = r"^[^\n]+$"

# --------------------------------------------------------------------------- strategies


@st.composite
def headers(draw) -> Header:
    tile = 1 << draw(st.integers(4, 12))
    cols = draw(st.integers(1, min(16, -(-MAX_SIDE // tile))))  # at most 16 x 16 tiles: examples stay cheap
    rows = draw(st.integers(1, min(16, -(-MAX_SIDE // tile))))
    h = Header(
        width=draw(st.integers((cols - 1) * tile + 1, min(cols * tile, MAX_SIDE))),
        height=draw(st.integers((rows - 1) * tile + 1, min(rows * tile, MAX_SIDE))),
        tile=tile,
        tokens=draw(st.integers(1, MAX_TOKENS)),
        model_id=draw(st.binary(min_size=4, max_size=4)),
        entropy_model=draw(st.sampled_from(sorted(ENTROPY_MODELS.values()))),
        icc=draw(st.binary(max_size=300)),
        exif=draw(st.binary(max_size=300)),
    )
    if draw(st.booleans()):
        h.weights = bytes(draw(st.lists(st.integers(1, 255), min_size=h.tiles, max_size=h.tiles)))
    if draw(st.booleans()):
        h.caps = bytes(draw(st.lists(st.integers(1, 255), min_size=h.tiles, max_size=h.tiles)))
    if draw(st.booleans()):
        h.display_width = draw(st.integers(h.width, min(MAX_SIDE, 16 * h.width)))
        h.display_height = draw(st.integers(h.height, min(MAX_SIDE, 16 * h.height)))
        if not h.scaled:  # the display size is stored only when it differs; it reads back as 0, 0
            h.display_width = h.display_height = 0
    return h


@st.composite
def containers(draw) -> Container:
    h = draw(headers())
    levels, seen = [], 0
    for level in sorted(draw(st.sets(st.integers(1, h.full_level), min_size=1, max_size=10)) | {1}):
        if sum(h.counts(level)) > seen:  # every layer must add a token
            levels.append(level)
            seen = sum(h.counts(level))
    layers = [Layer(level, draw(st.binary(min_size=4, max_size=4)) * draw(st.integers(1, 40)),
                    draw(st.integers(0, 0xFFFF))) for level in levels]
    return Container(h, layers, declared_level=levels[-1] if levels else 0)


def some_file(**changes) -> bytes:
    """A valid file of helpers.some_header(**changes) with three one-word layers at levels 1, 2, 4."""
    return container.write(Container(helpers.some_header(**changes), helpers.layers_for([1, 2, 4])))


def forged(h: Header | None = None, table=((1, 4, 7),), layers=None, **kw) -> bytes:
    """A file from helpers.header_fields (checks nothing) with a valid header CRC."""
    h = h or helpers.some_header()
    layers = [b"\0" * n for _, n, _ in table] if layers is None else layers
    return helpers.assemble(helpers.header_fields(h, list(table), **kw), layers)


def refused(data: bytes, match: str | None, **kw) -> str:
    with pytest.raises(FormatError, match=match) as e:
        container.read(data, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------- round trip and layout


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers())
def test_write_read_round_trip(c):
    data = container.write(c)
    # the bytes are the documented layout (helpers writes it independently of pack_header)
    assert data == helpers.assemble(helpers.header_fields(c.header, helpers.table_of(c)),
                                    [x.data for x in c.layers])
    back = container.read(data, max_pixels=None)
    assert back == c and back.complete
    assert container.write(back) == data
    h, table, pos = container.read_header(data, max_pixels=None)
    assert h == c.header and table == helpers.table_of(c)
    assert pos == container.header_size(data[:16]) == len(data) - c.payload_bytes
    assert container.is_odp(data[:5])


def test_round_trip_of_a_real_file(small_odp, model):
    c = container.read(small_odp)
    assert container.write(c) == small_odp
    h = c.header
    assert (h.version, h.tile, h.tokens) == (2, model.config.tile, model.config.tokens)
    assert h.model_id == model.sha256[:container.MODEL_ID_BYTES] and h.model_name == ""
    assert h.entropy_model == model.best_entropy.id
    assert c.complete and c.kept == c.level == c.declared_level <= h.full_level  # one tile: ends at its cap
    assert all(x.check is not None and len(x.data) % 4 == 0 for x in c.layers)


@pytest.mark.parametrize("n, encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                        (300, b"\xac\x02"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
                                        (65535, b"\xff\xff\x03")])
def test_varint(n, encoded):
    assert helpers.varint(n) == encoded


@pytest.mark.parametrize("side", [1, 127, 128, 16383, 16384, MAX_SIDE])
def test_varints_at_their_boundaries(side):
    """Width, height, tokens, level steps and layer lengths at 1- 2- and 3-byte varint boundaries."""
    tokens = min(side, MAX_TOKENS)
    h = Header(side, MAX_SIDE + 1 - side, 4096, tokens, b"\1\2\3\4", "pos-freq-v1")
    words = min(side, 20000)
    c = Container(h, [Layer(tokens, bytes(4 * words), 0xBEEF)], declared_level=tokens)
    data = container.write(c)
    fields = (bytes([0]) + helpers.varint(side) + helpers.varint(MAX_SIDE + 1 - side) + b"\x0c"
              + helpers.varint(tokens) + b"\1\2\3\4\1" + b"\1" + helpers.varint(tokens) + helpers.varint(words)
              + b"\xef\xbe")
    assert data.startswith(MAGIC + b"\x02" + helpers.varint(len(fields)) + fields)
    assert container.read(data, max_pixels=None) == c


def test_header_length_varint_boundary():
    """A header of 127 bytes has a one-byte length, of 128 bytes a two-byte one."""
    base = len(helpers.header_fields(helpers.some_header(icc=b"x"), [(1, 4, 0)]))
    for size, length_bytes in ((127, 1), (128, 2)):
        h = helpers.some_header(icc=b"x" * (1 + size - base))
        data = container.write(Container(h, [Layer(1, b"abcd", 0)]))
        assert data[5:5 + length_bytes] == helpers.varint(size)
        assert container.header_size(data[:16]) == 5 + length_bytes + size + 4
        assert container.read(data).header == h


@pytest.mark.parametrize("icc, exif, flags", [(b"", b"", 0), (b"P" * 200, b"", 1), (b"", b"Exif", 2),
                                              (b"P", b"E" * 130, 3)])
def test_icc_and_exif_flags(icc, exif, flags):
    data = some_file(icc=icc, exif=exif)
    assert helpers.fields_of(data)[0] == flags
    h = container.read(data).header
    assert (h.icc, h.exif) == (icc, exif)


def test_adaptive_weights_round_trip():
    h = helpers.some_header(width=700, height=300, weights=bytes([255, 128, 1, 2, 200, 3]))  # 3 x 2 tiles
    assert h.adaptive and h.tiles == 6
    assert h.counts(0) == [0] * 6
    assert h.counts(10) == [10, 6, 1, 1, 8, 1]  # min(K, ceil(w * L / 255))
    assert h.counts(h.full_level) == [h.tokens] * 6
    levels = [1, 3, 255, h.full_level]
    c = Container(h, helpers.layers_for(levels), declared_level=h.full_level)
    data = container.write(c)
    assert container.read(data) == c
    assert helpers.fields_of(data)[0] == container.FLAG_WEIGHTS
    assert helpers.fields_of(data) == helpers.header_fields(h, helpers.table_of(c))  # one byte per tile


@pytest.mark.parametrize("weights, ok", [(b"\x01\xff", True), (b"\x00\xff", False), (b"\xff", False),
                                         (b"\xff\xff\xff", False)])
def test_adaptive_weights_one_byte_1_to_255_per_tile(weights, ok):
    h = helpers.some_header(weights=weights)  # 2 tiles
    if ok:
        assert container.read(container.write(Container(h, helpers.layers_for([1])))).header == h
        return
    with pytest.raises(FormatError, match="allocation weights must be 2 bytes"):
        container.write(Container(h, helpers.layers_for([1])))
    refused(forged(h), None)  # the reader takes 2 bytes: a wrong count misreads what follows


def test_zero_weight_in_a_file_is_named():
    refused(forged(helpers.some_header(weights=b"\x05\x00")), "each 1..255")


def test_token_caps_round_trip():
    """Caps stop a tile at ceil(c * K / 255) tokens; with weights, the full level is where every tile
    reaches its own cap, and a layer must add a token to some tile below its cap."""
    h = helpers.some_header(width=700, height=300, weights=bytes([255, 128, 1, 2, 200, 3]),
                            caps=bytes([255, 191, 255, 100, 1, 255]))  # K = 256
    assert h.adaptive and h.limits == [256, 192, 256, 101, 2, 256]
    assert h.counts(10) == [10, 6, 1, 1, 2, 1]
    assert h.counts(h.full_level) == h.limits and h.counts(h.full_level + 9) == h.limits
    assert h.full_level == -(-256 * 255 // 1)
    c = Container(h, helpers.layers_for([1, 3, 255, h.full_level]), declared_level=h.full_level)
    data = container.write(c)
    assert container.read(data) == c
    assert helpers.fields_of(data)[0] == container.FLAG_WEIGHTS | container.FLAG_CAPS
    assert helpers.fields_of(data) == helpers.header_fields(h, helpers.table_of(c))
    capped = helpers.some_header(caps=b"\x80\xff")  # uniform weights, 2 tiles
    assert capped.limits == [129, 256] and capped.full_level == 256 and capped.counts(200) == [129, 200]


def test_token_caps_rules():
    refused(forged(helpers.some_header(caps=b"\x05\x00")), "token caps must be 2 bytes .* each 1..255")
    with pytest.raises(FormatError, match="token caps must be 2 bytes"):
        container.write(Container(helpers.some_header(caps=b"\x05"), helpers.layers_for([1])))
    h = helpers.some_header(weights=b"\xff\xff", caps=b"\x01\x01")  # both tiles stop at 2 tokens
    assert h.full_level == 2
    with pytest.raises(FormatError, match="at most 2"):
        container.write(Container(h, helpers.layers_for([1, 3])))


def test_header_geometry():
    h = helpers.some_header(width=513, height=256, tile=256)
    assert (h.cols, h.rows, h.tiles, h.adaptive, h.full_level) == (3, 1, 3, False, 256)
    h = helpers.some_header(width=1, height=1, tile=16, tokens=5)
    assert (h.cols, h.rows, h.tiles) == (1, 1, 1)
    assert [h.counts(level) for level in (0, 1, 5, 9)] == [[0], [1], [5], [5]]


def test_full_level_gives_every_tile_all_tokens():
    for w in range(1, 256):
        h = helpers.some_header(width=256, tokens=37, weights=bytes([w]))
        assert h.counts(h.full_level) == [37] and h.counts(h.full_level + 1000) == [37]


def test_container_levels_and_counts():
    h = helpers.some_header(weights=b"\xff\x80")
    layers = helpers.layers_for([4, 8, 20], words=2)
    c = Container(h, layers, declared_level=20)
    assert h.counts(20) == [20, 11] and h.counts(4) == [4, 3]  # ceil(128 * 20 / 255), ceil(128 * 4 / 255)
    assert (c.level, c.kept, c.mean_tokens, c.payload_bytes) == (20, 20, 15.5, 24)
    cut = Container(h, layers[:1], complete=False, declared_level=20)
    assert (cut.level, cut.kept, cut.mean_tokens) == (4, 4, 3.5)
    assert (Container(h, [], complete=False).level, Container(h, [], complete=False).kept) == (0, 0)


# --------------------------------------------------------------------------- what the writer refuses


@pytest.mark.parametrize("changes, message", [
    ({"width": 0}, "image size"),
    ({"height": 0}, "image size"),
    ({"width": MAX_SIDE + 1}, "image size"),
    ({"tile": 15}, "tile size"),
    ({"tile": 24}, "tile size"),
    ({"tile": 8192}, "tile size"),
    ({"tokens": 0}, "tokens per tile"),
    ({"tokens": MAX_TOKENS + 1}, "tokens per tile"),
    ({"model_id": b"abc"}, "model id"),
    ({"model_id": bytes(32)}, "model id"),
    ({"weights": b"\x01"}, "allocation weights"),
    ({"icc": b"x" * (MAX_METADATA + 1)}, "ICC profile"),
    ({"exif": b"x" * (MAX_METADATA + 1)}, "EXIF block"),
    ({"entropy_model": "ctx-v9"}, "has no code"),
    ({"version": 1, "model_id": bytes(32)}, "only versions 2 to 4"),
])
def test_writer_refuses_bad_headers(changes, message):
    h = helpers.some_header(**changes)
    if message not in ("has no code", "only versions 2 to 4"):
        with pytest.raises(FormatError, match=message):
            h.validate()
    with pytest.raises(FormatError, match=message):
        container.pack_header(h, helpers.layers_for([1]))


def test_writer_needs_token_checks():
    with pytest.raises(FormatError, match="token check"):
        container.write(Container(helpers.some_header(), [Layer(1, b"abcd")]))


# (header, levels, byte lengths, message) for a layer table check_layers refuses
BAD_TABLES = {
    "level 0": (helpers.some_header(), [0], [4], "layer 0 has level 0, not above 0"),
    "levels not increasing": (helpers.some_header(), [2, 2], [4, 4], "layer 1 has level 2, not above 2"),
    "levels decreasing": (helpers.some_header(), [3, 1], [4, 4], "layer 1 has level 1"),
    "level above full": (helpers.some_header(tokens=8), [9], [4], "at most 8"),
    "adds no token": (helpers.some_header(width=256, weights=b"\x01"), [1, 2], [4, 4], "layer 1 .level 2. adds no"),
    "empty layer": (helpers.some_header(), [1], [0], "declares 0 bytes"),
    "ragged layer": (helpers.some_header(), [1], [6], "declares 6 bytes, not a positive whole number"),
    "huge layer": (helpers.some_header(), [1], [MAX_LAYER + 4], "over the limit"),
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_layer_table_rules(name):
    h, levels, lengths, message = BAD_TABLES[name]
    with pytest.raises(FormatError, match=message):
        container.check_layers(h, levels, lengths)
    if max(lengths) < 100:
        layers = [Layer(lv, bytes(n), 0) for lv, n in zip(levels, lengths)]
        with pytest.raises(FormatError, match=message):
            container.write(Container(h, layers))
    if all(0 < n <= MAX_LAYER and n % 4 == 0 for n in lengths) and levels == sorted(levels):
        # the reader applies the same rules to a forged table (lengths are stored in words, levels as steps)
        refused(forged(h, [(lv, n, 0) for lv, n in zip(levels, lengths)], layers=[]), message)


def test_reader_refuses_empty_layers_and_huge_lengths():
    refused(forged(table=[(1, 0, 0)]), "declares 0 bytes")
    refused(forged(table=[], layers=[]), "no layer")
    refused(forged(table=[(1, MAX_LAYER + 4, 0)], layers=[]), f"layer length {(MAX_LAYER + 4) // 4}, over the limit")


def test_validate_max_pixels():
    h = helpers.some_header(width=MAX_SIDE, height=MAX_SIDE)
    h.validate(max_pixels=None)
    with pytest.raises(FormatError, match="exceeds the limit"):
        h.validate()
    with pytest.raises(FormatError, match="exceeds the limit of 100 pixels"):
        helpers.some_header(width=11, height=10).validate(max_pixels=100)
    helpers.some_header(width=10, height=10).validate(max_pixels=100)
    assert DEFAULT_MAX_PIXELS >= 16384 * 16384


def test_read_applies_max_pixels(monkeypatch):
    big = some_file(width=20000, height=20000)
    refused(big, f"20000x20000 pixels exceeds the limit of {DEFAULT_MAX_PIXELS} pixels")
    assert container.read(big, max_pixels=None).header.width == 20000
    small = some_file()  # 300 x 200
    refused(small, "exceeds the limit of 1000 pixels", max_pixels=1000)
    refused(helpers.v1_file(), "320x240 pixels exceeds the limit of 1000 pixels", max_pixels=1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    refused(small, "exceeds the limit of 1000 pixels")
    assert container.read(small, max_pixels=60000).header.width == 300  # an explicit limit wins
    monkeypatch.setenv(MAX_PIXELS_ENV, " 60000 ")
    container.read(small)
    for bad in ("0", "-5", "1e6", "lots"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
            container.read(small)


# --------------------------------------------------------------------------- malformed bytes


def test_wrong_magic():
    data = some_file()
    for bad in (b"", b"\x89", b"\x89OD", MAGIC, b"\x89PNG\r\n\x1a\n" + data[8:], b"GIF89a", helpers.flip(data, 1)):
        refused(bad, r"not an ODP file \(wrong magic bytes\)")
    assert container.is_odp(data) and not container.is_odp(data[:4])
    assert issubclass(FormatError, ValueError)
    refused(b"PK\x03\x04" + bytes(40), "a zip file, such as an OpenDocument presentation")


@pytest.mark.parametrize("version", [0, 1, 5, 16, 255])
def test_unsupported_version(version):
    data = some_file()
    msg = refused(data[:4] + bytes([version]) + data[5:], "is not supported")
    assert msg.startswith("ODP format version ") and "versions 1 to 4" in msg
    assert not container.is_odp(data[:4] + bytes([version]))


@pytest.mark.parametrize("version", [5, 16, 255])
def test_unsupported_version_is_named_in_decimal(version):
    data = some_file()
    refused(data[:4] + bytes([version]) + data[5:], f"version {version} is not supported")


def test_huge_header_length_field():
    data = some_file()
    for n in (MAX_HEADER + 1, 0xFFFFFFFF):
        refused(helpers.with_header_length(data, n), f"header length {n}, over the limit")
    refused(helpers.with_header_length(data, MAX_HEADER), "cut short")  # within the limit, past the end
    refused(data[:5] + b"\xff" * 5 + data[6:], "malformed number")  # five bytes, all "more follows"


@pytest.mark.parametrize("field, value, message", [
    ("width", MAX_SIDE + 1, "a width 65536, over the limit of 65535"),
    ("height", 1 << 34, "over the limit"),
    ("tokens", MAX_TOKENS + 1, "tokens per tile 4097, over the limit"),
    ("icc", MAX_METADATA + 1, "ICC profile size 8388609, over the limit"),
    ("exif", MAX_METADATA + 1, "EXIF block size 8388609, over the limit"),
    ("layers", MAX_LEVEL + 1, "a layer count"),
])
def test_huge_numbers_in_the_header(field, value, message):
    """Every varint is bounded before anything is allocated for it."""
    v = helpers.varint(value)
    fields = {
        "width": b"\0" + v + b"\x01\x08\x01abcd\x01\x00",
        "height": b"\0\x01" + v + b"\x08\x01abcd\x01\x00",
        "tokens": b"\0\x01\x01\x08" + v + b"abcd\x01\x00",
        "icc": b"\x01\x01\x01\x08\x01abcd\x01" + v,
        "exif": b"\x02\x01\x01\x08\x01abcd\x01" + v,
        "layers": b"\0\x01\x01\x08\x01abcd\x01" + v,
    }[field]
    refused(helpers.assemble(fields), message)


def test_display_size_round_trip():
    """A file coded at a smaller size names the size to enlarge it to (flag bit 4, after the caps)."""
    h = helpers.some_header(display_width=1200, display_height=800, caps=b"\x10\xff")
    assert h.scaled and h.display_size == (1200, 800) and h.tiles == 2  # the tile grid is the coded size's
    c = Container(h, helpers.layers_for([1, 2]), declared_level=2)
    data = container.write(c)
    assert container.read(data) == c
    assert helpers.fields_of(data)[0] == container.FLAG_CAPS | container.FLAG_DISPLAY
    assert helpers.fields_of(data) == helpers.header_fields(h, helpers.table_of(c))
    plain = helpers.some_header(display_width=300, display_height=200)  # the coded size: no flag, no fields
    assert not plain.scaled and helpers.fields_of(some_file(display_width=300))[0] == 0


@pytest.mark.parametrize("size, ok", [((300, 200), True), ((4800, 3200), True), ((75, 50), True),
                                      ((299, 400), True), ((74, 400), False), ((600, 49), False),
                                      ((4801, 200), False), ((300, 3201), False)])
def test_display_size_is_between_a_quarter_of_the_coded_size_and_16_times_it(size, ok):
    h = helpers.some_header(display_width=size[0], display_height=size[1])  # coded 300 x 200
    data = forged(h, flags=container.FLAG_DISPLAY)
    if ok:
        assert container.read(data).header.display_size == size
    else:
        assert "not between 1/4 of the coded size 300x200 and 16 times it" in refused(data, "display size")


def test_display_and_coded_sizes_count_against_the_pixel_limit():
    """The bomb guard is on the larger of the decoded (display) and the coded size: a 1-tile file may
    claim 16x its sides, and a file coded at 4x its sides decodes all of its coded pixels first."""
    data = some_file(width=4000, height=4000, display_width=64000, display_height=64000)
    refused(data, "image of 64000x64000 pixels exceeds the limit")
    assert container.read(data, max_pixels=None).header.display_size == (64000, 64000)
    reduced = some_file(width=20000, height=20000, display_width=5000, display_height=5000)
    refused(reduced, "image of 20000x20000 pixels exceeds the limit")
    assert container.read(reduced, max_pixels=None).header.display_size == (5000, 5000)


def test_gray_flag_round_trips_and_survives_a_cut():
    data = some_file(gray=True)
    assert data[len(container.MAGIC) + 2] & container.FLAG_GRAY  # flags: the first header field
    assert container.read(data).header.gray
    assert not container.read(some_file()).header.gray
    assert container.read(data[:-4]).header.gray  # cut short: the header is whole


@pytest.mark.parametrize("flags", [0x80, 0xFF])
def test_unknown_flags(flags):
    refused(forged(flags=flags), f"unknown flags {flags:#04x}")


def test_the_low_band_flag_needs_a_base_thumbnail():
    refused(forged(flags=container.FLAG_LOW_BAND), "low-band flag but no base thumbnail")
    with pytest.raises(FormatError, match="needs a base thumbnail"):
        container.write(Container(helpers.some_header(base_low_band=9), helpers.layers_for([1])))


@pytest.mark.parametrize("code", [0, 8, 255])
def test_unknown_entropy_model_code(code):
    refused(forged(code=code), f"entropy model code {code} is unknown")


def test_entropy_model_codes():
    for code, name in ENTROPY_MODELS.items():
        data = forged(helpers.some_header(entropy_model=name))
        assert helpers.fields_of(data)[1 + 2 + 2 + 1 + 2 + 4] == code  # after flags, width, height, tile, tokens, id
        assert container.read(data).header.entropy_model == name


@pytest.mark.parametrize("tile", [8, 8192])
def test_tile_size_code_out_of_range(tile):
    refused(forged(helpers.some_header(tile=tile)), "tile size 2\\^")


def test_header_checksum():
    data = some_file()
    start = len(MAGIC) + 2  # the version byte and the one-byte length have their own errors
    for pos in range(start, helpers.header_end(data)):  # header fields and the CRC itself
        refused(helpers.flip(data, pos, 0x01), "header checksum mismatch")


def test_header_with_trailing_bytes():
    h = helpers.some_header()
    refused(helpers.assemble(helpers.header_fields(h, [(1, 4, 0)]) + b"\0", [b"abcd"]), "header has trailing bytes")


def test_header_cut_inside_its_fields():
    fields = helpers.header_fields(helpers.some_header(icc=b"icc!", exif=b"ex", weights=b"\x10\x20"),
                                   [(1, 4, 0), (2, 4, 0)])
    for n in range(len(fields)):
        refused(helpers.assemble(fields[:n]), "header is cut short")
    for n in range(5, len(MAGIC) + 2 + len(fields) + 4):  # the file itself ends inside the header
        refused(helpers.assemble(fields)[:n], "file header is cut short|cut short inside its header")


def test_bytes_after_the_last_layer():
    data = some_file()
    refused(data + b"\0", "1 unexpected bytes after the last layer")
    refused(data + b"\0" * 9, "9 unexpected bytes")


def test_file_cut_short_keeps_its_complete_layers():
    h = helpers.some_header(weights=b"\xff\x80")
    layers = helpers.layers_for([1, 3, 10], words=2)
    data = container.write(Container(h, layers))
    end = helpers.header_end(data)
    for n in range(end, len(data)):
        c = container.read(data[:n])
        whole = (n - end) // 8  # layers of 8 bytes each
        assert not c.complete and c.layers == layers[:whole]
        assert c.declared_level == 10 and c.level == (layers[whole - 1].level if whole else 0)
        assert c.header == h


def test_header_size_and_is_odp():
    v2, v1 = some_file(), helpers.v1_file()
    for data in (v2, v1):
        assert container.is_odp(data[:16])
        assert container.header_size(data[:16]) == container.read_header(data)[2]
    assert container.header_size(v1[:16]) == len(MAGIC_V1) + 4 + len(helpers.v1_head(v1)) + 4
    assert container.is_odp(MAGIC + b"\x02") and container.is_odp(MAGIC + b"\x03") and container.is_odp(MAGIC_V1)
    assert container.is_odp(MAGIC + b"\x04")
    for other in (b"", MAGIC, MAGIC + b"\x05", MAGIC_V1[:7], b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"):
        assert not container.is_odp(other) and container.header_size(other) is None
    with pytest.raises(FormatError, match="over the limit"):
        container.header_size(MAGIC_V1 + struct.pack("<I", MAX_HEADER + 1))


def test_many_layers_over_many_tiles_read_quickly():
    """A 16 KB header (16384x16384 in 16-px tiles, 4096 one-word layers) must not take a minute to check."""
    h = Header(16384, 16384, 16, MAX_TOKENS, b"abcd", "pos-freq-v1")
    data = forged(h, [(lv, 4, 0) for lv in range(1, MAX_TOKENS + 1)], layers=[])
    with helpers.time_limit(10):  # a hang guard (milliseconds when right, a minute when quadratic)
        c = container.read(data)
    assert not c.complete and c.declared_level == MAX_TOKENS


def test_many_layers_over_many_weighted_and_capped_tiles_read_quickly():
    """The same with a weight and a cap per tile (2 MB of header): each layer looks at <= 255 weights."""
    h = Header(16384, 16384, 16, MAX_TOKENS, b"abcd", "pos-freq-v1")
    h.weights = bytes(i % 255 + 1 for i in range(h.tiles))
    h.caps = bytes(i * 7 % 255 + 1 for i in range(h.tiles))
    data = forged(h, [(lv, 4, 0) for lv in range(1, 4001)], layers=[])
    with helpers.time_limit(20):  # about a second when right
        c = container.read(data, max_pixels=None)
    assert not c.complete and c.declared_level == 4000


# --------------------------------------------------------------------------- properties of corrupt files


def check_flipped(orig: bytes, pos: int, mask: int) -> None:
    """A change in the header is refused; the container does not check layer bytes (their token checks do)."""
    bad = helpers.flip(orig, pos, mask)
    if pos < helpers.header_end(orig):
        with pytest.raises(FormatError):
            container.read(bad, max_pixels=None)
    else:
        good, c = container.read(orig, max_pixels=None), container.read(bad, max_pixels=None)
        assert c.header == good.header and [x.level for x in c.layers] == [x.level for x in good.layers]
        assert b"".join(x.data for x in c.layers) == bad[helpers.header_end(orig):]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers(), st.data())
def test_any_byte_flip(c, data):
    orig = container.write(c)
    check_flipped(orig, data.draw(st.integers(0, len(orig) - 1), label="pos"), data.draw(st.integers(1, 255)))


def test_every_byte_flip_of_a_real_file(small_odp):
    for pos in range(len(small_odp)):
        for mask in (0x01, 0x80, 0xFF):
            check_flipped(small_odp, pos, mask)


def check_prefix(orig: bytes, n: int) -> None:
    good = container.read(orig, max_pixels=None)
    try:
        c = container.read(orig[:n], max_pixels=None)
    except FormatError:
        assert n < helpers.header_end(orig), f"a cut at {n} (inside the payload) raised"
        return
    assert n >= helpers.header_end(orig)
    assert c.header == good.header and c.declared_level == good.declared_level
    assert c.complete == (n == len(orig))
    # exactly the layers that end at or before the cut are kept
    assert c.layers == good.layers[:sum(e <= n for _, e in helpers.layer_spans(orig))]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers(), st.data())
def test_random_truncation_yields_a_prefix(c, data):
    orig = container.write(c)
    check_prefix(orig, data.draw(st.integers(0, len(orig)), label="cut"))


def test_every_truncation_of_a_real_file(small_odp):
    for data in (small_odp, helpers.v1_file()):
        for n in range(len(data) + 1):
            check_prefix(data, n)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
@example(b"")
@example(b"\x02\x00")
@example(b"\x02\x80\x80\x80\x80\x80")
@example(b"\x02\x05\x00\x01\x01\x04\x01")
def test_random_bytes_only_raise_format_error(blob):
    for data in (blob, MAGIC + blob, MAGIC + b"\x02" + blob, MAGIC_V1 + blob):
        try:
            container.read(data)
        except FormatError as e:
            assert str(e) and "\n" not in str(e)


# --------------------------------------------------------------------------- version 1


V1_LEVELS = [8, 16, 24, 32, 40, 48, 56, 64]


def test_reads_a_version_1_file(v1_model):
    data = helpers.v1_file()
    c = container.read(data)
    h = c.header
    assert (h.version, h.width, h.height, h.tile, h.tokens) == (1, 320, 240, 256, 256)
    assert (h.entropy_model, h.model_name, h.weights, h.icc, h.exif) == ("pos-freq-v1", "odp-small-v1", b"", b"", b"")
    assert h.model_id == v1_model.sha256  # v1 names the weights by their whole sha256
    assert [x.level for x in c.layers] == V1_LEVELS and all(x.check is None for x in c.layers)
    assert c.complete and c.declared_level == c.level == 64 and h.counts(64) == [64, 64]
    # a layer is the chunk's bytes without its CRC
    spans = helpers.layer_spans(data)
    assert [x.data for x in c.layers] == [data[s:e - 4] for s, e in spans]
    assert [container.read_header(data)[1][i][1] for i in range(8)] == [e - s for s, e in spans]


def test_version_1_chunk_checksum():
    data = helpers.v1_file()
    for i, (s, e) in enumerate(helpers.layer_spans(data)):
        for pos in range(s, e):  # the chunk bytes and its CRC
            refused(helpers.flip(data, pos, 0x10), f"payload chunk {i} checksum mismatch")


def test_version_1_header_checksum():
    data = helpers.v1_file()
    for pos in range(len(MAGIC_V1) + 4, helpers.header_end(data)):
        refused(helpers.flip(data, pos, 0x01), "header checksum mismatch")
    for pos in range(4, len(MAGIC_V1)):  # the rest of the v1 magic
        refused(helpers.flip(data, pos, 0x01), "is not supported")


def test_version_1_cut_short():
    data = helpers.v1_file()
    s, e = helpers.layer_spans(data)[3]
    for n in (s, s + 5, e - 1):
        c = container.read(data[:n])
        assert not c.complete and [x.level for x in c.layers] == V1_LEVELS[:3] and c.declared_level == 64
    with pytest.raises(FormatError, match="3 unexpected bytes"):
        container.read(data + b"abc")


def v1_with(**fields) -> bytes:
    """The real v1 file with header fields overwritten (at their v1 offsets) and CRCs made valid."""
    data = helpers.v1_file()
    head = bytearray(helpers.v1_head(data))
    offsets = {"version": ("<B", 0), "width": ("<I", 2), "tile": ("<H", 10), "tokens": ("<H", 12),
               "kept": ("<H", 14), "chunk_tokens": ("<H", 16)}
    for name, value in fields.items():
        fmt, at = offsets[name]
        struct.pack_into(fmt, head, at, value)
    c = container.read(data)
    return helpers.assemble_v1(bytes(head), [x.data for x in c.layers])


@pytest.mark.parametrize("fields, message", [
    ({}, None),
    ({"version": 4}, "version 4 is not supported"),
    ({"width": 0}, "image size"),
    ({"width": 70000}, "image size"),
    ({"tile": 100}, "tile size"),
    ({"kept": 0}, "kept tokens 0"),
    ({"kept": 257}, "kept tokens 257"),
    ({"chunk_tokens": 0}, "chunk size 0"),
    ({"kept": 72}, "cut short"),  # a ninth chunk length that is not there
    ({"kept": 56}, "trailing bytes"),  # one chunk length too many
    ({"chunk_tokens": 16}, "trailing bytes"),
])
def test_version_1_header_fields(fields, message):
    data = v1_with(**fields)
    if message is None:
        assert data == helpers.v1_file()
    else:
        refused(data, message)


def test_version_1_name_that_is_not_utf8():
    data = helpers.v1_file()
    head = helpers.v1_head(data).replace(b"odp-small-v1", b"odp-small-\xff\xfe")
    refused(helpers.assemble_v1(head, [x.data for x in container.read(data).layers]), "not UTF-8")


def test_version_1_is_read_never_written():
    c = container.read(helpers.v1_file())
    with pytest.raises(FormatError, match="only versions 2 to 4 are written"):
        container.write(c)


# --------------------------------------------------------------------------- version 3: later stages


def staged_file(stages: int = 2) -> tuple[Container, bytes]:
    """A first stage (300x200, display size its own) and `stages` refinement stages coded at 2x."""
    first = Container(helpers.some_header(), helpers.layers_for([1, 2, 4]))
    for i in range(stages):
        h = helpers.some_header(width=600, height=400, kind=1, display_width=300, display_height=200,
                                weights=bytes([255, 100] * 2 + [7, 9]), version=container.STAGED_VERSION)
        first.stages.append(Container(h, helpers.layers_for([3, 5 + i], words=2)))
    return first, container.write(first)


def test_a_file_with_later_stages_is_version_3_and_reads_back():
    c, data = staged_file()
    assert data[4] == container.STAGED_VERSION
    back = container.read(data)
    assert back.complete and back.header.stages_after == 2 and len(back.stages) == 2
    assert [x.data for x in back.layers] == [x.data for x in c.layers]
    for got, made in zip(back.stages, c.stages):
        assert got.header.kind == 1 and (got.header.width, got.header.height) == (600, 200 * 2)
        assert got.header.display_size == (300, 200) and got.header.weights == made.header.weights
        assert [(x.level, x.data, x.check) for x in got.layers] == [(x.level, x.data, x.check) for x in made.layers]
    assert container.write(back) == data
    assert container.write(Container(c.header, c.layers))[4] == container.VERSION  # no stage: version 2, as before


def test_every_cut_of_a_staged_file_reads_as_far_as_it_arrived():
    """A download cut anywhere after the first layer reads: the first stage's whole layers, then each
    later stage whose header and at least one layer arrived; never more as the cut gets shorter."""
    _, data = staged_file()
    first_layer_end = helpers.layer_spans(data)[0][1]
    prev = None
    for n in range(len(data), first_layer_end - 1, -1):
        c = container.read(data[:n])
        got = (len(c.layers), [len(s.layers) for s in c.stages])
        assert c.complete == (n == len(data))
        if prev is not None:
            assert got[0] <= prev[0] and len(got[1]) <= len(prev[1])
        prev = got
    assert prev == (1, [])


@pytest.mark.parametrize("damage, message", [
    ("stage crc", "stage header checksum mismatch"),
    ("kind", "stage kind 9 is unknown"),
    ("trailing", "unexpected bytes after the last layer"),
    ("no stages", "declares no stage after the first"),
])
def test_damaged_staged_files_are_refused(damage, message):
    c, data = staged_file(1)
    stage_at = len(container.MAGIC) + len(container.pack_header(c.header, c.layers, 1)) + sum(len(x.data) for x in c.layers)
    if damage == "stage crc":
        data = helpers.flip(data, stage_at + 3)
    elif damage == "kind":
        head = container.pack_stage_header(c.stages[0].header, c.stages[0].layers)
        n = head[0]  # a one-byte length: the fields follow it
        fields = bytes([9]) + head[2:1 + n]
        fixed = head[:1] + fields
        data = data[:stage_at] + fixed + struct.pack("<I", zlib.crc32(fixed)) + data[stage_at + len(head):]
    elif damage == "trailing":
        data += b"\0\0\0\0"
    else:  # a version-3 first stage whose count of later stages is 0
        fields = helpers.fields_of(container.write(Container(c.header, c.layers))) + b"\0"
        data = helpers.assemble(fields, [x.data for x in c.layers], version=container.STAGED_VERSION)
    refused(data, message)


def test_the_writer_refuses_too_many_stages_and_unknown_kinds():
    with pytest.raises(FormatError, match="at most 4 stages"):
        staged_file(container.MAX_STAGES)  # 1 + 4
    c, _ = staged_file(1)
    c.stages[0].header.kind = 5
    with pytest.raises(FormatError, match="stage kind 5 is unknown"):
        container.write(c)


# --------------------------------------------------------------------------- version 4: a base thumbnail


def based_file(levels=(1, 2, 4), stages: int = 0, base: bytes = b"RIFF-thumbnail-bytes") -> tuple[Container, bytes]:
    """A version-4 file: 600x400 tokens (2x) refining a base thumbnail of its 300x200 picture shrunk 4x."""
    h = helpers.some_header(width=600, height=400, display_width=300, display_height=200, base_codec=2,
                            base_shrink=4, base=base)
    c = Container(h, helpers.layers_for(list(levels)))
    for i in range(stages):
        sh = helpers.some_header(width=1200, height=800, kind=1, display_width=300, display_height=200,
                                 version=container.STAGED_VERSION)
        c.stages.append(Container(sh, helpers.layers_for([3, 5 + i], words=2)))
    return c, container.write(c)


@pytest.mark.parametrize("levels, stages", [((1, 2, 4), 0), ((), 0), ((1, 8), 1)])
def test_a_file_with_a_base_thumbnail_is_version_4_and_reads_back(levels, stages):
    """The thumbnail lives in the CRC-checked header; the layers may be none (the thumbnail alone)."""
    c, data = based_file(levels, stages)
    assert data[4] == container.BASE_VERSION
    back = container.read(data)
    h = back.header
    assert back.complete and (h.base_codec, h.base_shrink, h.base) == (2, 4, b"RIFF-thumbnail-bytes")
    assert h.base_size == (75, 50) and h.display_size == (300, 200)
    assert [x.level for x in back.layers] == list(levels) and len(back.stages) == stages
    assert container.write(back) == data


@pytest.mark.parametrize("weight", [1, 128, 255])
def test_a_base_low_band_weight_is_one_byte_after_the_thumbnail_and_survives_a_cut(weight):
    c, plain = based_file()
    c.header = replace(c.header, base_low_band=weight)
    data = container.write(c)
    assert len(data) == len(plain) + 1 and data[len(container.MAGIC) + 2] & container.FLAG_LOW_BAND
    at = data.index(b"RIFF-thumbnail-bytes") + len(b"RIFF-thumbnail-bytes")
    assert data[at] == weight
    assert container.read(data).header.base_low_band == weight
    assert container.read(data[:helpers.layer_spans(data)[0][0]]).header.base_low_band == weight
    zero = bytearray(data)  # the flag with a weight of 0: corrupt
    zero[at] = 0
    end = helpers.header_end(data)
    zero[end - 4:end] = struct.pack("<I", zlib.crc32(bytes(zero[len(container.MAGIC):end - 4])))
    refused(bytes(zero), "low-band weight is 0")


@pytest.mark.parametrize("n", [1, 100, 127, 128, 5000, 20000])
def test_base_framing_is_what_a_budget_loses_before_its_thumbnail(n):
    """A file of the thumbnail alone is exactly base_framing + the thumbnail's bytes; an upper bound on
    the thumbnail's size (varints grow with it) never gives less."""
    c, data = based_file((), base=bytes(range(256)) * (n // 256) + bytes(n % 256))
    h = c.header
    assert container.base_framing(h, n) + n == len(data)
    assert container.base_framing(h, 10 * n) >= container.base_framing(h, n)


def test_a_cut_inside_the_base_thumbnail_is_refused_in_one_line():
    c, data = based_file()
    end = helpers.layer_spans(data)[0][0]  # the header ends where the first layer starts
    for n in (8, end // 2, end - 1):
        msg = refused(data[:n], "cut short inside its header, which holds its base thumbnail")
        assert f"({n} of {end} bytes)" in msg
    assert len(container.read(data[:end]).layers) == 0  # the header whole: the thumbnail arrived


@pytest.mark.parametrize("change, message", [
    ({"base_codec": 9}, "base thumbnail codec 9 is unknown"),
    ({"base_shrink": 0}, "base thumbnail shrink 0 is outside 1..16"),
    ({"base_shrink": 17}, "base thumbnail shrink 17 is outside 1..16"),
])
def test_bad_base_fields_are_refused(change, message):
    c, _ = based_file()
    with pytest.raises(FormatError, match=message):
        container.write(Container(replace(c.header, **change), c.layers))
    h = replace(c.header, base_codec=1)  # write a valid file, then patch the byte and its CRC
    good = container.write(Container(h, c.layers))
    at = good.index(b"RIFF-thumbnail-bytes") - 3  # codec, shrink, length
    field, value = ("base_codec", 0) if "base_codec" in change else ("base_shrink", 1)
    patched = bytearray(good)
    patched[at + value] = change[field]
    end = helpers.header_end(good)
    patched[end - 4:end] = struct.pack("<I", zlib.crc32(bytes(patched[len(container.MAGIC):end - 4])))
    refused(bytes(patched), message)


def test_a_file_without_tokens_needs_a_base():
    with pytest.raises(FormatError, match="no layer of tokens"):
        container.write(Container(helpers.some_header(), []))
