"""Fuzzing the readers of untrusted bytes: the container, the entropy decoder, truncate, `odp info`/`decode`.

Seeds are real files: tests/data/astronaut-320x240.png encoded once per module (version 2, uniform and
adaptive, with metadata, cut short) and the version-1 file in tests/data/v1. Hypothesis mutates them (cuts,
bit flips, inserted and deleted bytes, header fields and layer tables behind a recomputed CRC, layer
contents, so that the entropy decoder sees junk). For any input the outcome must be a result or a clean
error: FormatError (ModelNotFound when the header names weights that are not installed), an OdpWarning
only for a file cut short, exit 1 with one line from the CLI; within a time bound and, for the parser, a
memory bound. This is the short run for CI; the long run is tests/fuzz_container.py.
"""
from __future__ import annotations

import tempfile
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import helpers
from odp.codec import errors, stream
from odp.codec.errors import ModelNotFound
from odp.formats import container
from odp.formats.container import ENTROPY_MODELS, Container, FormatError
from test_cli import assert_clean_error, odp


def fuzz(n: int):
    """Hypothesis settings for a fuzz target: n cases, no deadline (time_limit bounds each case instead)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@contextmanager
def memory_limit(limit: int):
    """Fail the case if Python/numpy allocations peak above `limit` bytes: a blow-up is a finding."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak <= limit, f"peak allocation {peak} bytes over {limit}"
    finally:
        tracemalloc.stop()


@contextmanager
def only_cut_short_warnings():
    """Run a block; afterwards, every warning it gave must be the OdpWarning for a file cut short, or
    for a damaged layer that ends it (read as a cut)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        assert issubclass(w.category, errors.OdpWarning), w
        assert "cut short" in str(w.message) or "is damaged" in str(w.message), w


@pytest.fixture(scope="module")
def seeds(astronaut, model) -> list[bytes]:
    """Version 2: 2 tiles at 32 tokens (uniform: the adaptive encoder runs the network at nine token counts,
    too slow here), the same tokens packed with allocation weights and with ICC/EXIF, a file cut inside
    its last layer; the version-1 file; and a version-3 file (the uniform one with a made-up refinement
    stage: the container reads it, the codec refuses it)."""
    uniform = helpers.encode(astronaut, tokens=32, model=model, device="cpu", adaptive=False)
    c, _, toks, _ = stream.read_tokens(uniform)
    h = c.header
    adaptive = stream.pack(toks, h.width, h.height, model, weights=b"\xff\x80", level=32)
    meta = stream.pack(toks, h.width, h.height, model, icc=bytes(range(40)), exif=b"Exif\0\0MM", level=8)
    from dataclasses import replace

    stage = replace(h, width=2 * h.width, height=2 * h.height, display_width=h.width, display_height=h.height,
                    kind=1, version=container.STAGED_VERSION)
    staged = container.write(Container(h, c.layers, stages=[Container(stage, helpers.layers_for([4, 9, 30], 3))]))
    return [uniform, adaptive, meta, uniform[:-5], helpers.v1_file(), staged]


FIELDS = {
    "width": st.integers(0, 70000), "height": st.integers(0, 70000),
    "tile": st.sampled_from([8, 16, 64, 128, 256, 512, 4096, 8192]),
    "tokens": st.integers(0, 5000),
    "model_id": st.binary(min_size=4, max_size=4),
    "entropy_model": st.sampled_from(sorted(ENTROPY_MODELS.values())),
    "weights": st.binary(max_size=5),
    "icc": st.binary(max_size=40), "exif": st.binary(max_size=40),
}


def mutate(draw, data: bytes) -> bytes:
    """One to three random edits of a file: raw (bytes) or structural (header fields, layer table, layers)."""
    rnd = draw(st.randoms(use_true_random=False))

    def spot(n: int) -> int:  # anywhere in 0..n-1, evenly: st.integers favours 0, the magic bytes
        return rnd.randrange(n)

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "delete", "header", "header", "table", "layers"]))
        n = len(data)
        if kind == "cut":
            data = data[: spot(n + 1)]
        elif kind == "flip" and n:
            data = helpers.flip(data, spot(n), 1 << draw(st.integers(0, 7)))
        elif kind == "insert":
            at = spot(n + 1)
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif kind == "delete" and n:
            at = spot(n)
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif kind in ("header", "table", "layers"):
            try:
                c = container.read(data, max_pixels=None)
            except FormatError:
                continue
            if c.header.version != container.VERSION:
                continue
            if kind == "header":
                name = draw(st.sampled_from(sorted(FIELDS)))
                data = helpers.reheader(data, **{name: draw(FIELDS[name])})
            elif kind == "table":
                data = mutate_table(draw, c)
            elif c.complete and c.layers:
                data = mutate_layers(draw, c)
    return data


def mutate_table(draw, c: Container) -> bytes:
    """The same header and payload bytes under an edited layer table (valid CRC)."""
    table = helpers.table_of(c)
    i = draw(st.integers(0, max(0, len(table) - 1)))
    edit = draw(st.sampled_from(["drop", "duplicate", "level", "length", "check", "empty"]))
    if edit == "empty":
        table = []
    elif table and edit == "drop":
        del table[i]
    elif table and edit == "duplicate":
        table.insert(i, table[i])
    elif table:
        level, length, check = table[i]
        if edit == "level":
            level = max(0, level + draw(st.integers(-3, 3)))
        elif edit == "length":
            length = max(0, length + 4 * draw(st.integers(-2, 2)))
        else:
            check = draw(st.integers(0, 0xFFFF))
        table[i] = (level, length, check)
    if any(b[0] < a[0] for a, b in zip(table, table[1:])):
        return container.write(c)  # level steps are unsigned: keep the file as it was
    return helpers.assemble(helpers.header_fields(c.header, table), [x.data for x in c.layers])


def mutate_layers(draw, c: Container) -> bytes:
    """The same header with other layer contents (whole words, so that the writer takes them)."""
    layers = [x.data for x in c.layers]
    i = draw(st.integers(0, len(layers) - 1))
    edit = draw(st.sampled_from(["junk", "extend", "shrink", "swap"]))
    if edit == "junk":
        layers[i] = draw(st.binary(min_size=1, max_size=16)).ljust(4, b"\0") * 4
    elif edit == "extend":
        layers[i] += draw(st.binary(min_size=4, max_size=4))
    elif edit == "shrink" and len(layers[i]) > 4:
        layers[i] = layers[i][:-4]
    elif edit == "swap":
        j = draw(st.integers(0, len(layers) - 1))
        layers[i], layers[j] = layers[j], layers[i]
    layers[i] = layers[i][: len(layers[i]) // 4 * 4] or b"\0\0\0\0"
    return helpers.with_layers(container.write(c), layers)


@fuzz(250)
@given(st.data())
def test_fuzz_container_read(seeds, data):
    blob = mutate(data.draw, data.draw(st.sampled_from(seeds)))
    with helpers.time_limit(2), memory_limit(3 * len(blob) + (1 << 20)):
        try:
            c = container.read(blob)
        except FormatError as e:
            event(f"refused: {str(e)[:30]}")
            assert str(e) and "\n" not in str(e)
            return
    event("read: whole" if c.complete else "read: cut short")
    h = c.header
    h.validate()
    levels = [x.level for x in c.layers]
    assert levels == sorted(set(levels)) and all(0 < lv <= h.full_level for lv in levels)
    assert (c.level == c.declared_level) >= c.complete and c.kept <= h.tokens
    assert c.complete or c.level < c.declared_level or h.stages_after  # cut short: in the first stage or after it
    assert all((x.check is None) == (h.version == 1) and x.data for x in c.layers)
    assert len(c.stages) <= h.stages_after and all(s.layers and s.header.kind == 1 for s in c.stages)


@fuzz(150)
@given(st.data())
def test_fuzz_read_tokens_verify_truncate(seeds, model, data):
    """read_tokens, verify and truncate take any bytes; what truncate makes is a valid file of the same tokens."""
    blob = mutate(data.draw, data.draw(st.sampled_from(seeds)))
    with helpers.time_limit(10), memory_limit(64 << 20), only_cut_short_warnings():
        try:
            c, _, toks, counts = stream.read_tokens(blob)
        except FormatError as e:
            event(f"refused: {str(e)[:30]}")
            return
        except ModelNotFound:  # a header that names other weights (its CRC recomputed by mutate)
            assert not model.sha256.startswith(container.read(blob).header.model_id)
            return
    event("decoded tokens")
    h = c.header
    assert toks.shape == (h.tiles, h.tokens) and toks.dtype == np.int32
    assert ((toks >= 0) & (toks < model.config.codebook_size)).all()
    assert counts.tolist() == h.counts(c.level)
    assert all(not toks[t, counts[t]:].any() for t in range(h.tiles))
    try:
        with only_cut_short_warnings():
            stream.verify(blob)
        whole = True
    except FormatError:
        whole = False
    k = data.draw(st.integers(1, max(1, int(c.mean_tokens))), label="tokens")
    with helpers.time_limit(10), only_cut_short_warnings():
        try:
            small = stream.truncate(blob, tokens=k)
        except FormatError as e:  # see test_truncate_to_a_level_that_adds_no_token
            assert "adds no token" in str(e), e
            event("known bug: truncate re-codes a layer that adds no token")
            return
    c2, _, toks2, counts2 = stream.read_tokens(small)
    assert c2.complete and c2.header.version == container.VERSION and counts2.mean() <= k
    assert all((toks2[t, :n] == toks[t, :n]).all() for t, n in enumerate(counts2))
    if whole:  # whole layers are copied as they are, so only a whole file must give a whole file
        stream.verify(small)


def test_truncate_to_a_level_that_adds_no_token(seeds, model):
    """Levels past a tile's K (or below 255 / weight) can add no token: truncate must still give a file."""
    _, _, toks, _ = stream.read_tokens(seeds[0])
    data = stream.pack(toks, 320, 240, model, weights=b"\x64\x32", level=32)  # every tile below 255
    c = container.read(data)
    h = c.header
    assert [x.level for x in c.layers][:2] == [1, 3] and h.counts(5) == h.counts(3)
    small = stream.truncate(data, level=5)  # the file keeps level 3; 4 and 5 add nothing to it
    assert stream.read_tokens(small)[3].tolist() == h.counts(3)


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory(prefix="odp-fuzz-") as d:
        yield Path(d)


@fuzz(40)
@given(st.data())
def test_fuzz_cli_info(seeds, fuzz_dir, data):
    path = fuzz_dir / "in.odp"
    path.write_bytes(mutate(data.draw, data.draw(st.sampled_from(seeds))))
    for args in (["info", path], ["info", path, "--verify", "--json"]):
        with helpers.time_limit(20):
            r = odp(*args)
        if r.exit_code != 0:
            assert_clean_error(r)


def test_a_file_without_layers_is_refused(seeds):
    """A header listing no layer holds no image: the writer and the reader refuse it."""
    c = container.read(seeds[0])
    with pytest.raises(FormatError, match="no layer"):
        container.write(Container(c.header, []))


@fuzz(6)
@given(st.data())
def test_fuzz_cli_decode(seeds, fuzz_dir, data):
    """The network runs on whatever decodes; --max-pixels keeps each case to a few tiles."""
    path, out = fuzz_dir / "in.odp", fuzz_dir / "out.png"
    path.write_bytes(mutate(data.draw, data.draw(st.sampled_from(seeds))))
    with helpers.time_limit(60):
        r = odp("decode", path, "-o", out, "--force", "--max-pixels", 4 * 256 * 256)
    event(f"exit {r.exit_code}")
    if r.exit_code != 0:
        assert_clean_error(r)
        assert not out.exists()
    else:
        out.unlink()
    assert [p.name for p in fuzz_dir.iterdir()] == ["in.odp"]  # no .part file either way


def test_seeds_are_what_they_claim(seeds):
    uniform, adaptive, meta, cut, v1, staged = (container.read(s) for s in seeds)
    assert staged.header.version == 3 and len(staged.stages) == 1 and staged.layers == uniform.layers
    assert uniform.header.version == adaptive.header.version == 2 and v1.header.version == 1
    assert not uniform.header.adaptive and adaptive.header.adaptive and uniform.kept == 32
    assert meta.header.icc and meta.header.exif
    assert uniform.complete and not cut.complete and cut.layers == uniform.layers[:len(cut.layers)]
