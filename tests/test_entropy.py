"""Entropy models (position tables, the integer context model) and the layered range coder.

No neural network runs here. The shipped context model is tested when installed; a small one
quantised from a random float model (codec/training/context.quantise) tests the mechanics either way.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import helpers
from odp.codec import errors, registry, stream, weights
from odp.codec.training import context as train_context
from odp.entropy import coder
from odp.entropy.context import ContextModel, DigitContextModel
from odp.entropy.models import TOTAL, PositionTables, quantize
from odp.formats import container

# --------------------------------------------------------------------------- position tables


def test_model_tables_match_the_model(model):
    t = model.tables
    assert t.alphabet == model.config.codebook_size
    assert t.positions >= model.config.tokens
    assert model.entropy_model == t.id and model.entropy(t.id) is t
    assert (t.freqs > 0).all() and (t.freqs.sum(1) == TOTAL).all()
    pos = np.array([0, 5, 5, t.positions - 1])
    np.testing.assert_array_equal(t.frequencies(np.zeros((4, 0), np.int64), pos), t.freqs[pos])
    with pytest.raises(weights.ModelNotFound, match="ctx-v9"):
        model.entropy("ctx-v9")


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
    assert model.tables.first_token_bits() == pytest.approx(24 - np.log2(model.tables.freqs[0].max()))


# --------------------------------------------------------------------------- context model


def tiny_context(alphabet=256, positions=64, lags=8, dim=16, hidden=64) -> tuple[dict, dict]:
    """Integer tensors and metadata quantised from a random float model (sharpened so that the
    tables range from near-certain to flat): the ranges quantise() gives a trained one."""
    torch.manual_seed(0)
    net = train_context.FloatContext(alphabet, positions, lags, dim, hidden)
    with torch.no_grad():
        net.l2.weight.mul_(8)
        net.pos_bias.normal_(0, 1)
    rng = np.random.default_rng(0)
    ctx = torch.from_numpy(rng.integers(0, alphabet + 1, (2000, lags)))
    pos = torch.from_numpy(rng.integers(0, positions, 2000))
    return train_context.quantise(net, "ctx-test", bytes(32), ctx, pos)


def limit_context(alphabet=64, positions=16, lags=4, dim=8, hidden=16) -> tuple[dict, dict]:
    """Random integers about as large as ContextModel accepts (sums near 2**51): the output weights share
    a large common part, so logits differ by a sliver of their size and any inexact product (float32
    without limbs, or a looser bound in ContextModel's checks) would show in the tables."""
    rng = np.random.default_rng(9)
    common = rng.choice([-1, 1], hidden) * 2**9
    tensors = {"emb": rng.integers(-2**20, 2**20, (alphabet + 1, dim)),
               "w1": rng.integers(-2**12, 2**12, (hidden, lags * dim)),
               "pos_bias": rng.integers(-2**36, 2**36, (positions, hidden)),
               "w2": common + rng.integers(-4, 5, (alphabet, hidden)),
               "b2": rng.integers(-2**48, 2**48, alphabet),
               "exp_lut": tiny_context()[0]["exp_lut"]}
    return tensors, {"id": "ctx-limit", "lags": str(lags), "shift1": "0", "mult": "512", "shift2": "42"}


def save_context(tmp_path_factory, tensors: dict, meta: dict):
    path = tmp_path_factory.mktemp("ctx") / f"{meta['id']}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope="session")
def tiny_context_file(tmp_path_factory):
    return save_context(tmp_path_factory, *tiny_context())


def tiny_digit_context(radix=4, digits=4, positions=64, lags=8, dim=16, hidden=64) -> tuple[dict, dict]:
    """A DigitContextModel's tensors quantised from a random float model (sharpened as tiny_context's)."""
    torch.manual_seed(1)
    net = train_context.FloatDigitContext(radix, digits, positions, lags, dim, hidden)
    with torch.no_grad():
        net.w2.mul_(8)
        net.pos_bias.normal_(0, 1)
        net.prefix_bias.normal_(0, 1)
    rng = np.random.default_rng(0)
    ctx = torch.from_numpy(rng.integers(0, radix ** digits + 1, (2000, lags)))
    pos = torch.from_numpy(rng.integers(0, positions, 2000))
    tok = torch.from_numpy(rng.integers(0, radix ** digits, 2000))
    return train_context.quantise_digits(net, "ctxd-test", bytes(32), ctx, pos, tok)


def digit_reference(t: dict, meta: dict, ctx: np.ndarray, pos: np.ndarray, lower: np.ndarray, k: int) -> np.ndarray:
    """DigitContextModel.digit_frequencies' arithmetic in np.int64 alone (einsum on int64)."""
    shift1, mult, shift2, radix = (int(meta[key]) for key in ("shift1", "mult", "shift2", "radix"))
    emb, w1, pb, prefix, w2, b2, lut = (t[key].astype(np.int64) for key in
                                        ("emb", "w1", "pos_bias", "prefix_bias", "w2", "b2", "exp_lut"))
    x = emb[ctx].reshape(len(ctx), -1)
    row = sum(radix ** j for j in range(k)) + lower
    h = np.maximum(np.einsum("nd,hd->nh", x, w1) + pb[pos] + prefix[row], 0) >> shift1
    logit = (np.einsum("nh,vh->nv", h, w2[k]) * mult + b2[k] + (1 << (shift2 - 1))) >> shift2
    f = lut[np.minimum(logit.max(1, keepdims=True) - logit, len(lut) - 1)]
    q = f * (TOTAL - radix) // f.sum(1, keepdims=True) + 1
    for r in q:
        r[int(np.argmax(r))] += TOTAL - int(r.sum())
    return q


@pytest.fixture(scope="session")
def tiny_digit_model():
    tensors, meta = tiny_digit_context()
    return DigitContextModel(meta["id"], tensors, meta), tensors, meta


@pytest.fixture(params=["installed", "tiny"])
def digit_context(request, model, tiny_digit_model):
    """(model, tensors, meta): the installed digit context model of the default tokenizer, and a tiny one."""
    if request.param == "tiny":
        return tiny_digit_model
    path = shipped_context_file(model, digits=True)
    if path is None:
        pytest.skip("no digit context model is installed")
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    return DigitContextModel(meta["id"], tensors, meta), tensors, meta


def test_digit_tables_are_exact_and_equal_the_integer_reference(digit_context):
    m, tensors, meta = digit_context
    assert m.radix ** m.digits == m.alphabet and m.digits > 1
    ctx, pos = random_contexts(m, 400, seed=2)
    toks = np.random.default_rng(3).integers(0, m.alphabet, 400)
    pre = m.prepare(ctx, pos)
    few_pre = np.concatenate([m.prepare(ctx[i:i + 6], pos[i:i + 6]) for i in range(0, 400, 6)])
    np.testing.assert_array_equal(pre, few_pre)  # float32 limbs for a few rows, float64 for many: same integers
    for k in range(m.digits):
        lower = toks % m.radix ** k
        f = m.digit_frequencies(pre, lower, k)
        assert f.dtype == np.int64 and f.shape == (400, m.radix) and (f > 0).all() and (f.sum(1) == TOTAL).all()
        np.testing.assert_array_equal(f, digit_reference(tensors, meta, ctx, pos, lower, k))
    # the lower digits matter, and the bits of a token are the sum over its digits
    f0 = m.digit_frequencies(pre[:1].repeat(m.radix, 0), np.arange(m.radix), 1)
    assert len({r.tobytes() for r in f0}) > 1
    every = np.arange(min(m.alphabet, 512))
    first = m.token_bits(np.full((len(every), m.lags), m.alphabet), np.zeros(len(every), np.int64), every)
    tables = coder.digit_tables(m, every[:, None], every, np.zeros(len(every), np.int64))
    assert tables.shape == (len(every), m.digits, m.radix)
    picked = np.take_along_axis(tables, coder.digits_of(every, m)[:, :, None], 2)[:, :, 0]
    np.testing.assert_allclose(first, (24 - np.log2(picked)).sum(1))
    assert 0 < m.first_token_bits() <= first.min() + 1e-9
    # and it is the cheapest first token of all, exactly (computed digit by digit, not token by token)
    all_tokens = np.arange(m.alphabet)
    cheapest = m.token_bits(np.full((m.alphabet, m.lags), m.alphabet), np.zeros(m.alphabet, np.int64), all_tokens).min()
    assert m.first_token_bits() == cheapest


def test_digit_model_refuses_tensors_that_do_not_fit():
    tensors, meta = tiny_digit_context()
    with pytest.raises(ValueError, match="digit tensors"):
        DigitContextModel("x", tensors, dict(meta, radix="2"))
    with pytest.raises(ValueError, match="digit tensors"):
        DigitContextModel("x", dict(tensors, prefix_bias=tensors["prefix_bias"][:-1]), meta)
    with pytest.raises(ValueError, match="too large for exact integer inference"):
        DigitContextModel("x", dict(tensors, prefix_bias=tensors["prefix_bias"] + (1 << 53)), meta)


def shipped_context_file(model, digits: bool = False):
    """The installed file of the model's context model of one kind (ContextModel, or DigitContextModel
    with `digits`), or None. Context models are bound to the tokenizer that makes the model's tokens:
    the model itself or, for a decoder-only fine-tune, the model it names as tokens_of (registry.py)."""
    for context_id, path in model.entry.contexts:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        assert meta.get("id") == context_id
        assert meta.get("tokenizer_sha256") in (model.sha256.hex(), tokens_of(model))
        if ("digits" in meta) == digits:
            return path
    return None


def tokens_of(model) -> str | None:
    """The sha256 (hex) of the tokenizer whose tokens a decoder-only fine-tune decodes, if any."""
    with safe_open(str(weights.WEIGHTS_DIR / f"{model.name}.safetensors"), framework="pt") as f:
        return (f.metadata() or {}).get("tokens_of")


def load_context(path) -> tuple[ContextModel, dict, dict]:
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    return ContextModel(meta["id"], tensors, meta), tensors, meta


@pytest.fixture(scope="module", params=["installed", "at the exactness limit"])
def context(request, model, tiny_context_file, tmp_path_factory):
    """(model, tensors, meta, file): the installed context model (the tiny one when none is installed),
    and one whose integers come close to what exact float64 inference allows."""
    if request.param == "installed":
        path = shipped_context_file(model) or tiny_context_file
    else:
        path = save_context(tmp_path_factory, *limit_context())
    return (*load_context(path), path)


def random_contexts(m, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n (context, position) pairs as the coder makes them: PAD (= alphabet) where a tile has no token yet."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, m.positions, n)
    pos[: n // 10] = rng.integers(0, m.lags + 1, n // 10)  # early positions: some PAD
    toks = rng.integers(0, m.alphabet, (n, m.positions))
    return coder.contexts(m, toks, np.arange(n), pos), pos


def reference_frequencies(t: dict, meta: dict, ctx: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """ContextModel.frequencies' arithmetic in np.int64 alone: no float, no BLAS (einsum on int64)."""
    shift1, mult, shift2 = (int(meta[k]) for k in ("shift1", "mult", "shift2"))
    emb, w1, pb, w2, b2, lut = (t[k].astype(np.int64) for k in ("emb", "w1", "pos_bias", "w2", "b2", "exp_lut"))
    alphabet = emb.shape[0] - 1
    x = emb[ctx].reshape(len(ctx), -1)
    h = np.maximum(np.einsum("nd,hd->nh", x, w1) + pb[pos], 0) >> shift1
    logit = (np.einsum("nh,vh->nv", h, w2) * mult + b2 + (1 << (shift2 - 1))) >> shift2
    f = lut[np.minimum(logit.max(1, keepdims=True) - logit, len(lut) - 1)]
    q = f * (TOTAL - alphabet) // f.sum(1, keepdims=True) + 1
    for row in q:  # the remainder goes to the first largest entry
        row[int(np.argmax(row))] += TOTAL - int(row.sum())
    return q


def check_tables(f: np.ndarray, m) -> None:
    assert f.dtype == np.int64 and f.shape[1] == m.alphabet
    assert (f > 0).all() and (f.sum(1) == TOTAL).all()


def test_context_frequencies_are_exact_tables(context):
    m = context[0]
    ctx, pos = random_contexts(m, 2000)
    f = m.frequencies(ctx, pos)
    check_tables(f, m)
    same_position = m.frequencies(ctx[:5], np.full(5, pos[0]))
    assert len({row.tobytes() for row in same_position}) > 1  # the context matters
    assert 0 < m.first_token_bits() < np.log2(m.alphabet) + 1


def test_context_frequencies_batch_equals_one_row_at_a_time(context):
    m = context[0]
    ctx, pos = random_contexts(m, 300)
    rows = np.concatenate([m.frequencies(ctx[i:i + 1], pos[i:i + 1]) for i in range(len(pos))])
    np.testing.assert_array_equal(m.frequencies(ctx, pos), rows)
    np.testing.assert_array_equal(m.frequencies(ctx[::-1], pos[::-1]), rows[::-1])


def test_context_frequencies_equal_integer_reference(context):
    """Both ways of computing: many rows (float64 products) and a few (float32 products on limbs)."""
    m, tensors, meta, _ = context
    ctx, pos = random_contexts(m, 400, seed=2)
    reference = reference_frequencies(tensors, meta, ctx, pos)
    np.testing.assert_array_equal(m.frequencies(ctx, pos), reference)
    few = np.concatenate([m.frequencies(ctx[i:i + 6], pos[i:i + 6]) for i in range(0, 400, 6)])
    np.testing.assert_array_equal(few, reference)


HASH_TABLES = """
import hashlib, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from odp.entropy.context import ContextModel
with safe_open(sys.argv[1], framework="np") as f:
    meta = f.metadata()
m = ContextModel(meta["id"], load_file(sys.argv[1]), meta)
rng = np.random.default_rng(3)
n = 3000
ctx = np.where(rng.random((n, m.lags)) < 0.05, m.alphabet, rng.integers(0, m.alphabet, (n, m.lags)))
pos = rng.integers(0, m.positions, n)
h = hashlib.sha256()
for i in range(0, n, 500):
    h.update(m.frequencies(ctx[i:i + 500], pos[i:i + 500]).astype("<i8").tobytes())
print(h.hexdigest())
"""


def test_context_frequencies_do_not_depend_on_blas_threads(context):
    """The float64 products are exact, so one BLAS thread and two give the same tables."""
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", HASH_TABLES, str(context[3])], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_context_model_refuses_parameters_too_large_for_exact_inference():
    tensors, meta = tiny_context(alphabet=16, positions=8, lags=2, dim=4, hidden=8)
    ContextModel("ok", tensors, meta)
    big = dict(tensors, pos_bias=tensors["pos_bias"] + (1 << 53))
    with pytest.raises(ValueError, match="too large for exact integer inference"):
        ContextModel("big", big, meta)


def test_contexts_pad_before_the_tile_start(context):
    m = context[0]
    toks = np.arange(2 * m.positions).reshape(2, m.positions) % m.alphabet
    tiles, pos = np.array([0, 1, 1]), np.array([0, 1, m.lags])
    ctx = coder.contexts(m, toks, tiles, pos)
    assert (ctx[0] == m.alphabet).all()  # nothing before position 0
    assert ctx[1, 0] == toks[1, 0] and (ctx[1, 1:] == m.alphabet).all()
    np.testing.assert_array_equal(ctx[2], toks[1, m.lags - 1::-1])  # the previous `lags` tokens, nearest first
    assert coder.contexts(PositionTables(np.full((4, 2), TOTAL // 2)), toks, tiles, pos).shape == (3, 0)


# --------------------------------------------------------------------------- layer order


def reference_order(before, after):
    """Step-major, tiles ascending, spelled out."""
    order = sorted((i, t) for t in range(len(before)) for i in range(after[t] - before[t]))
    steps = max((i + 1 for i, _ in order), default=0)
    return ([t for _, t in order], [before[t] + i for i, t in order],
            [sum(1 for j, _ in order if j == i) for i in range(steps)])


def test_layer_order_example():
    tile, pos, per_step = coder.layer_order(np.array([0, 2, 1, 5]), np.array([3, 3, 4, 5]))
    assert tile.tolist() == [0, 1, 2, 0, 2, 0, 2]
    assert pos.tolist() == [0, 2, 1, 1, 2, 2, 3]
    assert per_step.tolist() == [3, 2, 2]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8)), min_size=1, max_size=12))
def test_layer_order(spans):
    before = np.array([b for b, _ in spans])
    after = before + np.array([n for _, n in spans])
    tile, pos, per_step = coder.layer_order(before, after)
    assert (tile.tolist(), pos.tolist(), per_step.tolist()) == reference_order(before.tolist(), after.tolist())


# --------------------------------------------------------------------------- coder


@pytest.fixture(scope="module", params=["position tables", "shipped context model", "tiny context model",
                                        "tiny digit context model"])
def entropy(request, model, tiny_context_file, tiny_digit_model):
    if request.param == "position tables":
        return model.tables
    if request.param == "shipped context model":
        if model.context is None:
            pytest.skip("no context model is installed")
        return model.context
    if request.param == "tiny digit context model":
        return tiny_digit_model[0]
    return load_context(tiny_context_file)[0]


@st.composite
def layers(draw, alphabet: int, positions: int):
    """(tokens (tiles, positions), before, after): a layer whose tiles gain different numbers of tokens."""
    tiles = draw(st.integers(1, 6))
    before = np.array(draw(st.lists(st.integers(0, min(30, positions - 1)), min_size=tiles, max_size=tiles)))
    gain = np.array(draw(st.lists(st.integers(0, 10), min_size=tiles, max_size=tiles)))
    after = np.minimum(before + gain, positions)
    kind = draw(st.sampled_from(["uniform", "constant", "few"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        t = rng.integers(0, alphabet, (tiles, positions))
    elif kind == "constant":
        t = np.full((tiles, positions), draw(st.sampled_from([0, alphabet - 1])))
    else:
        t = rng.choice(rng.integers(0, alphabet, 3), (tiles, positions))
    return t.astype(np.int32), before, after


def decode_into(truth, before, after, data, m, check=None, strict=False) -> np.ndarray:
    """Decode a layer into a copy of truth whose layer positions are wiped (-1)."""
    out = truth.copy()
    tile, pos, _ = coder.layer_order(before, after)
    out[tile, pos] = -1
    coder.decode_layer(data, out, before, after, m, check, strict)
    return out


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_coder_round_trip(entropy, data):
    toks, before, after = data.draw(layers(entropy.alphabet, entropy.positions), label="layer")
    blob, check = coder.encode_layer(toks, before, after, entropy)
    assert len(blob) % 4 == 0
    tile, pos, _ = coder.layer_order(before, after)
    assert check == zlib.crc32(toks[tile, pos].astype("<u2").tobytes()) & 0xFFFF  # low 16 bits of CRC-32
    np.testing.assert_array_equal(decode_into(toks, before, after, blob, entropy, check, strict=True), toks)
    assert coder.encode_layer(toks, before, after, entropy) == (blob, check)  # deterministic
    # the layer's bytes depend on its tokens and earlier ones only
    later = toks.copy()
    for t in range(len(before)):
        later[t, after[t]:] = (later[t, after[t]:] + 1) % entropy.alphabet
    assert coder.encode_layer(later, before, after, entropy) == (blob, check)


def test_layers_decode_one_after_another(entropy):
    """An adaptive file's layers: each decodes given the tokens of the layers before it."""
    h = container.Header(700, 300, 256, min(entropy.positions, 48), b"abcd", "pos-freq-v1",
                         weights=bytes([255, 128, 1, 40, 200, 90]))
    rng = np.random.default_rng(4)
    toks = rng.integers(0, entropy.alphabet, (h.tiles, h.tokens)).astype(np.int32)
    levels = stream.layer_levels(h, h.full_level)
    counts = [np.array(h.counts(level)) for level in [0] + levels]
    coded = [coder.encode_layer(toks, b, a, entropy) for b, a in zip(counts, counts[1:])]
    out = np.full_like(toks, -1)
    for (blob, check), b, a in zip(coded, counts, counts[1:]):
        coder.decode_layer(blob, out, b, a, entropy, check, strict=True)
        for t in range(h.tiles):
            np.testing.assert_array_equal(out[t, :a[t]], toks[t, :a[t]])
    np.testing.assert_array_equal(out, toks)
    # a later layer alone, given the true earlier tokens
    i = len(coded) // 2
    blob, check = coded[i]
    np.testing.assert_array_equal(decode_into(toks, counts[i], counts[i + 1], blob, entropy, check), toks)


def test_context_model_layers_need_the_right_earlier_tokens(context):
    m = context[0]
    rng = np.random.default_rng(5)
    toks = rng.integers(0, m.alphabet, (3, m.positions)).astype(np.int32)
    before, after = np.array([4, 6, 5]), np.array([12, 12, 12])
    blob, check = coder.encode_layer(toks, before, after, m)
    wrong = toks.copy()
    wrong[:, :4] = (wrong[:, :4] + 1) % m.alphabet
    with pytest.raises(coder.EntropyError, match="fail their check"):
        decode_into(wrong, before, after, blob, m, check)


def some_layer(m, seed: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes, int]:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, m.alphabet, (3, m.positions)).astype(np.int32)
    before, after = np.array([0, 2, 5]), np.array([9, 2, 17])
    return (toks, before, after, *coder.encode_layer(toks, before, after, m))


def test_token_check_mismatch(entropy):
    toks, before, after, blob, check = some_layer(entropy)
    decode_into(toks, before, after, blob, entropy, check)
    for bad in (check ^ 1, check ^ 0x8000):
        with pytest.raises(coder.EntropyError, match="fail their check"):
            decode_into(toks, before, after, blob, entropy, bad)
    # bytes coded for other tiles' counts decode to other tokens
    with pytest.raises(coder.EntropyError):
        decode_into(toks, before, after + 1, blob, entropy, check)


def test_junk_bytes_raise_entropy_error(entropy):
    toks, before, after, blob, check = some_layer(entropy)
    rng = np.random.default_rng(7)
    junk = [bytes(len(blob)), b"\xff" * len(blob), b"\xff" * 4, blob[:4], blob[:-4], blob[4:] + blob[:4]]
    junk += [rng.integers(0, 256, 4 * n, dtype=np.uint8).tobytes() for n in range(1, 30)]
    for data in junk:
        if data == blob:
            continue
        with pytest.raises(coder.EntropyError):
            decode_into(toks, before, after, data, entropy, check)
        try:  # without a check, junk decodes to tokens in range or raises EntropyError
            out = decode_into(toks, before, after, data, entropy)
        except coder.EntropyError:
            continue
        assert ((out >= 0) & (out < entropy.alphabet)).all()


def test_decode_refuses_ragged_bytes_and_positions_beyond_the_model(entropy):
    toks, before, after, blob, check = some_layer(entropy)
    with pytest.raises(coder.EntropyError, match="whole number of 32-bit words"):
        decode_into(toks, before, after, blob + b"\0", entropy)
    wide = np.zeros((1, entropy.positions + 1), np.int32)
    with pytest.raises(coder.EntropyError, match="positions beyond"):
        coder.decode_layer(blob, wide, np.array([0]), np.array([entropy.positions + 1]), entropy)
    assert issubclass(coder.EntropyError, ValueError)


def test_strict_refuses_an_appended_word(entropy):
    toks, before, after, blob, check = some_layer(entropy)
    for extra in (b"\0\0\0\0", b"\0\0\0\1", blob[:4]):
        # the decoder's end-of-data test cannot see one word too many ...
        np.testing.assert_array_equal(decode_into(toks, before, after, blob + extra, entropy, check), toks)
        with pytest.raises(coder.EntropyError, match="not the exact coding"):  # ... the re-coding can
            decode_into(toks, before, after, blob + extra, entropy, check, strict=True)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 3), st.integers(0, 250), st.integers(0, 8), st.booleans())
def test_decode_layer_on_raw_bytes(model, raw, tiles, start, n, strict):
    """The range decoder on any whole-word bytes: tokens in range, or EntropyError; nothing else."""
    toks = np.zeros((tiles, model.tables.positions), np.int32)
    before = np.full(tiles, start)
    after = np.minimum(before + n, model.tables.positions)
    try:
        coder.decode_layer(raw[: len(raw) // 4 * 4], toks, before, after, model.tables, strict=strict)
    except coder.EntropyError:
        return
    assert ((toks >= 0) & (toks < model.tables.alphabet)).all()


# --------------------------------------------------------------------------- real files


def test_real_file_layers_are_the_coding_of_its_tokens(small_odp):
    c, model, toks, counts = stream.read_tokens(small_odp)
    h = c.header
    entropy = model.entropy(h.entropy_model)
    assert stream.build_layers(toks, h, [x.level for x in c.layers], entropy) == c.layers
    assert (counts == c.kept).all()
    # range coding: within a couple of percent of the ideal length plus a few words per layer
    bits = stream.token_bits(toks, entropy)
    ideal = sum(bits[t, :counts[t]].sum() for t in range(h.tiles))
    assert ideal <= 8 * c.payload_bytes <= ideal * 1.02 + 64 * len(c.layers)


def test_file_naming_another_entropy_model(small_odp, model):
    other = ({"pos-freq-v1", "ctx16-v1"} - {container.read(small_odp).header.entropy_model}).pop()
    with pytest.raises(container.FormatError, match=None if model.context else f"needs entropy model '{other}'"):
        stream.read_tokens(helpers.reheader(small_odp, entropy_model=other))


def test_corrupt_layer_bytes_do_not_verify(small_odp):
    """Layer bytes have no CRC: a change shows as a decoder error, a token-check mismatch or, where
    it still decodes to the same tokens, as bytes that are not their exact coding."""
    spans = helpers.layer_spans(small_odp)
    for s, e in spans:
        for pos in sorted({s, (s + e) // 2, e - 1}):
            bad = helpers.flip(small_odp, pos, 0x04)
            with pytest.raises(container.FormatError, match="payload layer"):
                stream.verify(bad)


def test_version_1_file_decodes_to_the_old_releases_tokens():
    data = helpers.v1_file()
    expected = helpers.v1_tokens()
    c, model, toks, counts = stream.read_tokens(data)
    assert c.header.version == 1 and counts.tolist() == [64, 64]
    np.testing.assert_array_equal(toks[:, :64], expected)
    assert not toks[:, 64:].any()
    stream.verify(data)
    c, _, part, counts = stream.read_tokens(data, tokens=20)
    assert counts.tolist() == [20, 20]
    np.testing.assert_array_equal(part[:, :20], expected[:, :20])


def test_version_1_file_cut_short_decodes_its_whole_chunks():
    data = helpers.v1_file()
    s, _ = helpers.layer_spans(data)[5]
    with pytest.warns(errors.OdpWarning, match="cut short"):
        c, _, toks, counts = stream.read_tokens(data[:s + 3])
    assert not c.complete and counts.tolist() == [40, 40]
    np.testing.assert_array_equal(toks[:, :40], helpers.v1_tokens()[:, :40])


def test_version_1_file_truncates_to_version_2():
    """truncate() writes version 2: the same layers, with their token checks added."""
    data = helpers.v1_file()
    expected = helpers.v1_tokens()
    for tokens, levels in ((None, [8, 16, 24, 32, 40, 48, 56, 64]), (20, [8, 16, 20])):
        v2 = stream.truncate(data, tokens=tokens)
        c = container.read(v2)
        assert c.header.version == 2 and [x.level for x in c.layers] == levels
        stream.verify(v2)
        _, _, toks, counts = stream.read_tokens(v2)
        np.testing.assert_array_equal(toks[:, :counts[0]], expected[:, :levels[-1]])
    v1_layers = container.read(data).layers
    assert [x.data for x in c.layers[:2]] == [x.data for x in v1_layers[:2]]  # whole chunks copied as they are
