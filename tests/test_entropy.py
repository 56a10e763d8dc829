"""Entropy model tables and the chunked range coder (no neural network)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from odp.codec import pipeline
from odp.entropy import coder
from odp.entropy.models import TOTAL, PositionTables, quantize

# --------------------------------------------------------------------------- tables


def test_model_tables_match_the_model(model):
    t = model.tables
    assert t.alphabet == model.config.codebook_size
    assert t.positions >= model.config.tokens
    assert model.entropy_model == t.id
    assert (t.freqs > 0).all() and (t.freqs.sum(1) == TOTAL).all()
    assert np.allclose(t.probabilities(0).sum(), 1.0)


@pytest.mark.parametrize("freqs", [
    np.full(8, TOTAL // 8),                                   # 1-D
    np.full((2, 8), TOTAL / 8),                               # float
    np.array([[TOTAL, 0]]),                                   # a zero entry
    np.array([[TOTAL // 2, TOTAL // 2 - 1]]),                 # does not sum to TOTAL
    np.array([[TOTAL + 1, -1]]),                              # negative entry
])
def test_tables_reject_bad_input(freqs):
    with pytest.raises(ValueError):
        PositionTables(freqs)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=st.floats(0, 1e6, allow_nan=False, allow_infinity=False)))
def test_quantize_gives_exact_positive_rows(w):
    w = w + 1e-9  # rows of all zeros are not probabilities
    p = w / w.sum(1, keepdims=True)
    q = quantize(p)
    assert q.dtype == np.int64 and q.shape == p.shape
    assert (q > 0).all()
    assert (q.sum(1) == TOTAL).all()
    # each entry within a few units of its ideal share
    assert np.abs(q - p * TOTAL).max() <= p.shape[1] + 1
    PositionTables(q)


def test_from_counts_smooths_unseen_codes():
    counts = np.zeros((3, 16), np.int64)
    counts[0, 3] = 1000
    counts[1, :] = 5
    t = PositionTables.from_counts(counts, prior_weight=10.0)
    assert t.freqs.shape == (3, 16)
    assert (t.freqs > 0).all() and (t.freqs.sum(1) == TOTAL).all()
    assert t.freqs[0].argmax() == 3
    assert t.freqs[2].min() > 1  # a row never seen still gets the marginal, not the floor


def test_bits_is_the_ideal_code_length(model):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, model.tables.alphabet, (3, 10))
    expected = -sum(np.log2(model.tables.freqs[j, toks[i, j]] / TOTAL) for i in range(3) for j in range(10))
    assert model.tables.bits(toks) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- coder


def test_chunk_bounds():
    assert coder.chunk_bounds(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert coder.chunk_bounds(16, 8) == [(0, 8), (8, 16)]
    assert coder.chunk_bounds(1, 8) == [(0, 1)]
    assert coder.chunk_bounds(5, 1) == [(i, i + 1) for i in range(5)]


@st.composite
def token_arrays(draw, alphabet: int, positions: int):
    tiles = draw(st.integers(1, 6))
    kept = draw(st.integers(1, min(40, positions)))
    kind = draw(st.sampled_from(["uniform", "constant", "few"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        t = rng.integers(0, alphabet, (tiles, kept))
    elif kind == "constant":
        t = np.full((tiles, kept), draw(st.sampled_from([0, alphabet - 1])))
    else:
        t = rng.choice(rng.integers(0, alphabet, 3), (tiles, kept))
    return t.astype(np.int32)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_coder_round_trip(model, data):
    tables = model.tables
    toks = data.draw(token_arrays(tables.alphabet, tables.positions), label="tokens")
    g = data.draw(st.integers(1, 10), label="chunk_tokens")
    chunks = coder.encode_tokens(toks, g, tables)
    assert len(chunks) == -(-toks.shape[1] // g)
    assert all(len(c) % 4 == 0 for c in chunks)
    out = coder.decode_tokens(chunks, toks.shape[0], toks.shape[1], g, tables)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, toks)
    # fewer chunks: the first tokens of every tile
    n = data.draw(st.integers(0, len(chunks)), label="chunks kept")
    part = coder.decode_tokens(chunks[:n], toks.shape[0], toks.shape[1], g, tables)
    np.testing.assert_array_equal(part, toks[:, :min(n * g, toks.shape[1])])
    # coding is deterministic
    assert coder.encode_tokens(toks, g, tables) == chunks


def test_chunk_is_independent_of_other_chunks(model):
    """Chunk i codes positions [i*G, (i+1)*G) alone: re-coding a shorter prefix reproduces the whole chunks."""
    rng = np.random.default_rng(5)
    toks = rng.integers(0, model.tables.alphabet, (3, 30)).astype(np.int32)
    full = coder.encode_tokens(toks, 8, model.tables)
    for k in (8, 13, 16, 29):
        part = coder.encode_tokens(toks[:, :k], 8, model.tables)
        assert part[: k // 8] == full[: k // 8]


def test_decode_chunk_rejects_ragged_bytes(model):
    with pytest.raises(coder.EntropyError):
        coder.decode_chunk(b"\x00\x01\x02", 2, 0, 8, model.tables)
    assert issubclass(coder.EntropyError, ValueError)


def test_real_tokens_cost_close_to_their_ideal_length(small_odp, model):
    c, _, toks = pipeline.read_tokens(small_odp)
    payload_bits = 8 * sum(len(ch) for ch in c.chunks)
    ideal = model.tables.bits(toks)
    # range coding: within a couple of percent plus a few words of flush per chunk
    assert payload_bits <= ideal * 1.02 + 64 * len(c.chunks)
