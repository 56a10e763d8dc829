"""Fuzzing the readers of untrusted bytes: the container, the entropy decoder, truncate, `odp decode`/`info`.

Seeds are real .odp files made from tests/data photos; hypothesis mutates them (cuts, bit flips, inserted
and deleted bytes, header fields, chunk contents under valid CRCs, so that the entropy decoder sees junk).
For any input the outcome must be a result or a clean error (FormatError / ModelNotFound; exit 1 with one
line), within a time bound and, for the parsers, a memory bound. This is the short run for CI; the long
run is tests/fuzz_container.py (figures in docs/security.md).
"""
from __future__ import annotations

import signal
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import helpers
from odp.codec import pipeline
from odp.codec.weights import ModelNotFound
from odp.entropy import coder
from odp.formats import container
from odp.formats.container import FormatError
from test_cli import assert_clean_error, odp

CLEAN = (FormatError, ModelNotFound)
pytestmark = pytest.mark.filterwarnings("ignore::odp.codec.pipeline.OdpWarning")


def fuzz(n: int):
    """Hypothesis settings for a fuzz target: n cases, no deadline (time_limit bounds each case instead)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@contextmanager
def time_limit(seconds: float):
    """Fail the case (TimeoutError) if it runs longer than `seconds`: a hang is a finding."""
    def expire(*_):
        raise TimeoutError(f"case ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


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


@pytest.fixture(scope="session")
def seeds(small_odp, encoded) -> list[bytes]:
    """Real files: one tile (whole and cut to 13 tokens), two tiles (24 tokens), and one cut mid-chunk."""
    two = pipeline.truncate(encoded["astronaut"], tokens=24)
    return [small_odp, pipeline.truncate(small_odp, tokens=13), two, two[: helpers.chunk_spans(two)[1][1] + 5]]


FIELDS = {
    "width": st.integers(0, 70000), "height": st.integers(0, 70000),
    "tile": st.sampled_from([0, 15, 16, 17, 64, 255, 256, 4096, 4097, 65535]),
    "tokens": st.integers(0, 65535), "kept": st.integers(0, 300), "chunk_tokens": st.integers(0, 300),
    "model_name": st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255),
    "entropy_model": st.sampled_from(["pos-freq-v1", "", "ctx-v9"]),
    "weights_hash": st.binary(min_size=32, max_size=32),
    "icc": st.binary(max_size=40), "exif": st.binary(max_size=40),
}


def mutate(draw, data: bytes) -> bytes:
    """One to three random edits of a file, structural (header fields, chunks) or raw (bytes)."""
    rnd = draw(st.randoms(use_true_random=False))

    def spot(n: int) -> int:  # anywhere in 0..n-1, evenly: st.integers favours 0, the magic bytes
        return rnd.randrange(n)

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "delete", "header", "header", "chunks", "chunks"]))
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
        elif kind in ("header", "chunks"):
            try:
                c = container.read(data, max_pixels=None)
            except FormatError:
                continue
            if kind == "header":
                name = draw(st.sampled_from(sorted(FIELDS)))
                data = helpers.reheader(data, **{name: draw(FIELDS[name])})
            elif c.complete:  # with_chunks writes a whole file, which has at least one chunk
                chunks = list(c.chunks)
                i = draw(st.integers(0, len(chunks) - 1))
                edit = draw(st.sampled_from(["junk", "extend", "shrink", "swap"]))
                if edit == "junk":
                    chunks[i] = draw(st.binary(min_size=1, max_size=16)).ljust(4, b"\0") * 4
                elif edit == "extend":
                    chunks[i] += draw(st.binary(min_size=4, max_size=4))
                elif edit == "shrink" and len(chunks[i]) > 4:
                    chunks[i] = chunks[i][:-4]
                elif edit == "swap":
                    j = draw(st.integers(0, len(chunks) - 1))
                    chunks[i], chunks[j] = chunks[j], chunks[i]
                chunks[i] = chunks[i][: len(chunks[i]) // 4 * 4] or b"\0\0\0\0"
                data = helpers.with_chunks(data, chunks)
    return data


@fuzz(300)
@given(st.data())
def test_fuzz_container_read(seeds, data):
    blob = mutate(data.draw, data.draw(st.sampled_from(seeds)))
    with time_limit(2), memory_limit(3 * len(blob) + (1 << 20)):
        try:
            c = container.read(blob)
        except FormatError as e:
            event(f"refused: {str(e)[:30]}")
            return
    event("read: whole" if c.complete else "read: cut short")
    assert c.kept <= c.header.kept and len(c.chunks) <= c.header.chunk_count
    assert c.complete == (len(c.chunks) == c.header.chunk_count)


@fuzz(150)
@given(st.data())
def test_fuzz_entropy_decode_and_truncate(seeds, data):
    """read_tokens, verify and truncate take any bytes; what truncate makes is a valid file of the same tokens."""
    blob = mutate(data.draw, data.draw(st.sampled_from(seeds)))
    with time_limit(10), memory_limit(64 << 20):
        try:
            c, model, toks = pipeline.read_tokens(blob)
        except CLEAN as e:
            event(f"refused: {str(e)[:30]}")
            return
    event("decoded tokens")
    h = c.header
    assert toks.shape == (h.tiles, c.kept) and toks.dtype == np.int32
    assert ((toks >= 0) & (toks < model.config.codebook_size)).all()
    try:
        pipeline.verify(blob)
        whole = True
    except FormatError:
        whole = False
    k = data.draw(st.integers(1, max(1, c.kept)), label="tokens")
    with time_limit(10):
        small = pipeline.truncate(blob, tokens=k)
    c2, _, toks2 = pipeline.read_tokens(small)
    assert c2.complete and np.array_equal(toks2, toks[:, :k])
    if whole:  # whole chunks are copied as they are, so only a whole file must give a whole file
        pipeline.verify(small)


@fuzz(150)
@given(st.binary(max_size=64), st.integers(1, 3), st.integers(0, 250), st.integers(1, 8))
def test_fuzz_decode_tokens_on_raw_bytes(model, raw, tiles, start, n):
    """The range decoder on any whole-word bytes: tokens in range, or EntropyError; nothing else."""
    chunk = raw[: len(raw) // 4 * 4]
    with time_limit(5):
        try:
            toks = coder.decode_chunk(chunk, tiles, start, start + n, model.tables, strict=n % 2 == 0)
        except coder.EntropyError:
            return
    assert ((toks >= 0) & (toks < 4096)).all()


@pytest.fixture(scope="session")
def fuzz_dir():
    with tempfile.TemporaryDirectory(prefix="odp-fuzz-") as d:
        yield Path(d)


@fuzz(40)
@given(st.data())
def test_fuzz_cli_info(seeds, fuzz_dir, data):
    path = fuzz_dir / "in.odp"
    path.write_bytes(mutate(data.draw, data.draw(st.sampled_from(seeds))))
    for args in (["info", path], ["info", path, "--verify", "--json"]):
        with time_limit(20):
            r = odp(*args)
        if r.exit_code != 0:
            assert_clean_error(r)


@fuzz(12)
@given(st.data())
def test_fuzz_cli_decode(seeds, fuzz_dir, data):
    """The network runs on whatever decodes; --max-pixels keeps each case to a few tiles."""
    path, out = fuzz_dir / "in.odp", fuzz_dir / "out.png"
    path.write_bytes(mutate(data.draw, data.draw(st.sampled_from(seeds))))
    with time_limit(60):
        r = odp("decode", path, "-o", out, "--force", "--max-pixels", 4 * 256 * 256)
    event(f"exit {r.exit_code}")
    if r.exit_code != 0:
        assert_clean_error(r)
        assert not out.exists()
    else:
        out.unlink()
    assert [p.name for p in fuzz_dir.iterdir()] == ["in.odp"]  # no .part file either way
