"""The .odp container: layout, validation, corruption and truncation (no neural network)."""
from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import helpers
from odp.formats import container
from odp.formats.container import (DEFAULT_MAX_PIXELS, MAGIC, MAX_CHUNK, MAX_HEADER, MAX_METADATA, MAX_SIDE,
                                   MAX_TOKENS, Container, FormatError, Header)

# --------------------------------------------------------------------------- strategies

names = st.text(max_size=40).filter(lambda s: len(s.encode("utf-8")) <= 255)


@st.composite
def headers(draw, max_chunks: int = 24) -> Header:
    tokens = draw(st.integers(1, MAX_TOKENS))
    kept = draw(st.integers(1, tokens))
    # keep the chunk count small so examples stay cheap: chunk_tokens >= kept / max_chunks
    chunk_tokens = draw(st.integers(max(1, -(-kept // max_chunks)), tokens))
    return Header(
        width=draw(st.integers(1, MAX_SIDE)),
        height=draw(st.integers(1, MAX_SIDE)),
        tile=draw(st.integers(16, 4096)),
        tokens=tokens,
        kept=kept,
        chunk_tokens=chunk_tokens,
        model_name=draw(names),
        weights_hash=draw(st.binary(min_size=32, max_size=32)),
        entropy_model=draw(names),
        icc=draw(st.binary(max_size=64)),
        exif=draw(st.binary(max_size=64)),
    )


@st.composite
def containers(draw) -> Container:
    h = draw(headers())
    chunks = draw(st.lists(st.binary(min_size=1, max_size=10).map(lambda b: b * 4),  # whole 32-bit words
                          min_size=h.chunk_count, max_size=h.chunk_count))
    return Container(h, chunks)


# --------------------------------------------------------------------------- round trip


@settings(max_examples=150, deadline=None)
@given(containers())
def test_write_read_round_trip(c):
    data = container.write(c)
    assert data.startswith(MAGIC)
    back = container.read(data, max_pixels=None)
    assert back.header == c.header
    assert back.chunks == c.chunks
    assert back.complete
    assert back.kept == c.header.kept
    h, lengths, pos = container.read_header(data, max_pixels=None)
    assert h == c.header and pos == helpers.header_end(data)
    assert lengths == [len(ch) for ch in c.chunks]


def test_round_trip_of_a_real_file(small_odp, model):
    c = container.read(small_odp)
    assert container.write(c) == small_odp
    h = c.header
    assert (h.tile, h.tokens, h.kept) == (model.config.tile, model.config.tokens, model.config.tokens)
    assert h.weights_hash == model.sha256 and h.model_name == model.name
    assert h.entropy_model == model.entropy_model
    assert len(c.chunks) == h.chunk_count == -(-h.kept // h.chunk_tokens)


def test_header_geometry():
    h = helpers.some_header(width=513, height=256, tile=256, kept=17, chunk_tokens=8)
    assert (h.cols, h.rows, h.tiles, h.chunk_count) == (3, 1, 3, 3)
    h = helpers.some_header(width=1, height=1, kept=16, chunk_tokens=8)
    assert (h.cols, h.rows, h.tiles, h.chunk_count) == (1, 1, 1, 2)


def test_container_kept_counts_complete_chunks():
    h = helpers.some_header(kept=20, chunk_tokens=8)
    assert Container(h, [b"", b"", b""]).kept == 20
    assert Container(h, [b"", b""], complete=False).kept == 16
    assert Container(h, [], complete=False).kept == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("changes, message", [
    ({"width": 0}, "image size"),
    ({"height": 0}, "image size"),
    ({"width": MAX_SIDE + 1}, "image size"),
    ({"tile": 15}, "tile size"),
    ({"tile": 4097}, "tile size"),
    ({"tokens": 0, "kept": 1}, "tokens per tile"),
    ({"tokens": MAX_TOKENS + 1}, "tokens per tile"),
    ({"kept": 0}, "kept tokens"),
    ({"kept": 257}, "kept tokens"),
    ({"chunk_tokens": 0}, "chunk size"),
    ({"chunk_tokens": 257}, "chunk size"),
    ({"weights_hash": b"short"}, "32 bytes"),
    ({"icc": b"x" * (MAX_METADATA + 1)}, "ICC profile"),
    ({"exif": b"x" * (MAX_METADATA + 1)}, "EXIF block"),
])
def test_validate_rejects_out_of_range_fields(changes, message):
    h = helpers.some_header(**changes)
    with pytest.raises(FormatError, match=message):
        h.validate()
    with pytest.raises(FormatError):
        container.pack_header(h, [])


def test_validate_max_pixels():
    h = helpers.some_header(width=MAX_SIDE, height=MAX_SIDE)
    h.validate(max_pixels=None)
    with pytest.raises(FormatError, match="exceeds the limit"):
        h.validate()
    with pytest.raises(FormatError, match="exceeds the limit of 100 pixels"):
        helpers.some_header(width=11, height=10).validate(max_pixels=100)
    helpers.some_header(width=10, height=10).validate(max_pixels=100)
    assert DEFAULT_MAX_PIXELS >= 16384 * 16384


def test_read_applies_max_pixels():
    h = helpers.some_header(width=20000, height=20000, kept=8)
    data = container.write(Container(h, [b"abcd"]))
    with pytest.raises(FormatError, match="exceeds the limit"):
        container.read(data)
    assert container.read(data, max_pixels=None).header.width == 20000
    with pytest.raises(FormatError, match="exceeds the limit"):
        container.read(container.write(Container(helpers.some_header(kept=8), [b"1234"])), max_pixels=1000)


def test_write_rejects_wrong_chunk_count():
    h = helpers.some_header(kept=20, chunk_tokens=8)  # needs 3 chunks
    for chunks in ([], [b"a"] * 2, [b"a"] * 4):
        with pytest.raises(FormatError, match="chunks given"):
            container.write(Container(h, chunks))


def test_names_longer_than_255_bytes_are_refused():
    with pytest.raises(FormatError, match="255"):
        container.write(Container(helpers.some_header(model_name="é" * 128, kept=8), [b"1234"]))


# --------------------------------------------------------------------------- malformed bytes


def test_wrong_magic():
    data = container.write(Container(helpers.some_header(kept=8), [b"1234"]))
    for bad in (b"", b"\x89PNG\r\n\x1a\n" + data[8:], b"GIF89a", helpers.flip(data, 1)):
        with pytest.raises(FormatError, match="not an ODP file"):
            container.read(bad)
    assert container.is_odp(data) and not container.is_odp(data[:7])


def test_huge_header_length_field():
    data = container.write(Container(helpers.some_header(kept=8), [b"1234"]))
    with pytest.raises(FormatError, match="over the limit"):
        container.read(helpers.put_u32(data, len(MAGIC), 0xFFFFFFFF))
    with pytest.raises(FormatError, match="over the limit"):
        container.read(helpers.put_u32(data, len(MAGIC), MAX_HEADER + 1))
    with pytest.raises(FormatError, match="cut short"):  # within the limit but past the end
        container.read(helpers.put_u32(data, len(MAGIC), MAX_HEADER))


def test_huge_chunk_length_field():
    h = helpers.some_header(kept=24)
    for i in range(3):
        for value in (0xFFFFFFFF, MAX_CHUNK + 1):
            lengths = [4, 4, 4]
            lengths[i] = value
            head = container.pack_header(h, [4, 4, 4])[:-12] + struct.pack("<3I", *lengths)
            with pytest.raises(FormatError, match=f"chunk {i} declares"):
                container.read(helpers.assemble(head, [b"1234", b"5678", b"9abc"]))


def test_header_checksum():
    data = container.write(Container(helpers.some_header(kept=8), [b"1234"]))
    end = helpers.header_end(data)
    for pos in range(len(MAGIC) + 4, end):  # header fields and the CRC itself
        with pytest.raises(FormatError, match="header checksum"):
            container.read(helpers.flip(data, pos, 0x01))


def test_chunk_checksum():
    data = container.write(Container(helpers.some_header(kept=24), [b"1234", b"5678", b"9abc"]))
    for i, (s, e) in enumerate(helpers.chunk_spans(data)):
        for pos in range(s, e):  # the chunk bytes and its CRC
            with pytest.raises(FormatError, match=f"chunk {i} checksum"):
                container.read(helpers.flip(data, pos, 0x10))


def test_trailing_bytes_after_last_chunk():
    data = container.write(Container(helpers.some_header(kept=8), [b"1234"]))
    with pytest.raises(FormatError, match="unexpected bytes"):
        container.read(data + b"\x00")


def test_unsupported_version():
    head = container.pack_header(helpers.some_header(kept=8), [4])
    with pytest.raises(FormatError, match="version 2 is not supported"):
        container.read(helpers.assemble(b"\x02" + head[1:], [b"1234"]))


def test_header_with_trailing_bytes():
    head = container.pack_header(helpers.some_header(kept=8), [4])
    with pytest.raises(FormatError, match="trailing bytes"):
        container.read(helpers.assemble(head + b"\x00", [b"1234"]))


def test_header_cut_inside_its_fields():
    head = container.pack_header(helpers.some_header(kept=8, icc=b"icc!"), [4])
    for n in range(len(head)):
        with pytest.raises(FormatError, match="cut short"):
            container.read(helpers.assemble(head[:n], [b"1234"]))


def test_name_that_is_not_utf8():
    h = helpers.some_header(kept=8, model_name="ab")
    head = bytearray(container.pack_header(h, [4]))
    i = head.index(b"\x02ab")
    head[i + 1:i + 3] = b"\xff\xfe"
    with pytest.raises(FormatError, match="not UTF-8"):
        container.read(helpers.assemble(bytes(head), [b"1234"]))


def test_metadata_block_over_the_limit():
    head = container.pack_header(helpers.some_header(kept=8), [4])
    # the ICC length field sits 12 bytes before the end (ICC len, EXIF len, both empty, one chunk length)
    bad = head[:-12] + struct.pack("<I", MAX_METADATA + 1) + head[-8:]
    with pytest.raises(FormatError, match="over the limit"):
        container.read(helpers.assemble(bad, [b"1234"]))


# --------------------------------------------------------------------------- properties of corrupt files


def check_flipped(orig: bytes, pos: int, mask: int) -> None:
    """Every single-byte change is detected: chunk lengths sit in the checked header."""
    bad = helpers.flip(orig, pos, mask)
    with pytest.raises(FormatError):
        container.read(bad, max_pixels=None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers(), st.data())
def test_any_byte_flip_is_detected(c, data):
    orig = container.write(c)
    pos = data.draw(st.integers(0, len(orig) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    check_flipped(orig, pos, mask)


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
    assert c.header == good.header
    assert c.chunks == good.chunks[:len(c.chunks)]
    assert c.complete == (n == len(orig))
    # exactly the chunks whose records end at or before the cut are kept
    assert len(c.chunks) == sum(e <= n for _, e in helpers.chunk_spans(orig))


@settings(max_examples=100, deadline=None)
@given(containers(), st.data())
def test_random_truncation_yields_a_prefix(c, data):
    orig = container.write(c)
    check_prefix(orig, data.draw(st.integers(0, len(orig)), label="cut"))


def test_every_truncation_of_a_real_file(small_odp):
    for n in range(len(small_odp) + 1):
        check_prefix(small_odp, n)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
@example(MAGIC)
@example(MAGIC + b"\xff\xff\xff\xff")
@example(MAGIC + b"\x00\x00\x00\x00" + struct.pack("<I", zlib.crc32(b"")))
def test_random_bytes_only_raise_format_error(blob):
    for data in (blob, MAGIC + blob):
        try:
            container.read(data)
        except FormatError:
            pass
