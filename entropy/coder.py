"""Range coding of token ids, one independent stream per layer of the payload.

A layer brings each tile from `before[t]` to `after[t]` tokens. Inside a layer, symbols
are coded step-major: step i codes token before[t] + i of every tile t that still has
one, tiles in order; a model that codes a token as several digits (models.EntropyModel)
codes, within a step, the lowest digit of every such tile, then the next digit, and so on.
A token's probabilities depend only on its position and on earlier tokens of its own tile,
so every layer decodes from the layers before it, and a shorter file is a cut of a longer one.

Probability models give integer tables summing to 2**24; the coder gets them as exact
binary fractions, and constriction's deterministic quantiser (pinned to 0.5.x) does the
rest, so both ends see identical models.
"""
from __future__ import annotations

import zlib

import constriction
import numpy as np

from .models import TOTAL

_FAMILY = constriction.stream.model.Categorical(perfect=False)
BLOCK = 2048  # symbols whose tables are computed at once when encoding (memory: BLOCK x 4096 x 8 bytes)


class EntropyError(ValueError):
    """A layer whose bytes cannot be a range-coder stream, or decode to tokens failing their check."""


def layer_order(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tile, position) of each symbol of a layer in coding order, and the symbol count per step."""
    need = after - before
    steps = int(need.max(initial=0))
    active = np.arange(steps)[:, None] < need[None, :]           # (steps, tiles)
    step, tile = np.nonzero(active)                               # row-major: step by step, tiles in order
    return tile, before[tile] + step, active.sum(1)


def contexts(model, tokens: np.ndarray, tile: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Previous `model.lags` tokens of each (tile, position), the model's alphabet size where there is none."""
    lags = model.lags
    src = pos[:, None] - np.arange(1, lags + 1)[None, :]
    ctx = tokens[tile[:, None], np.maximum(src, 0)]
    return np.where(src >= 0, ctx, model.alphabet)


def digit_tables(model, tokens: np.ndarray, tile: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(n, digits, radix) integer tables of every digit of the known tokens[tile, pos], each given the
    earlier tokens of its tile and the token's lower digits."""
    prepared = model.prepare(contexts(model, tokens, tile, pos), pos)
    if model.digits == 1:
        return model.digit_frequencies(prepared, None, 0)[:, None, :]
    tok = tokens[tile, pos].astype(np.int64)
    return np.stack([model.digit_frequencies(prepared, tok % model.radix ** k, k)
                     for k in range(model.digits)], 1)


def digits_of(tok: np.ndarray, model) -> np.ndarray:
    """(n,) token ids -> (n, digits) base-radix digits, lowest first."""
    return np.asarray(tok, np.int64)[:, None] // model.radix ** np.arange(model.digits) % model.radix


class KnownTokens:
    """An entropy model over tokens the encoder already holds. Each token's tables depend only on the
    tokens before it, all known, so the tables are computed once (in blocks) and kept: the allocation's
    code lengths and every layer's coding then share one pass of the context model, the encoder's
    largest cost. Kept as int32 up to KEEP_BYTES; a larger image has them computed at each use."""

    KEEP_BYTES = 96 << 20

    def __init__(self, model, tokens: np.ndarray):
        self.model, self.tokens = model, tokens
        self._rows = None

    def __getattr__(self, name):  # id, lags, digits, radix, alphabet, positions, first_token_bits: the model's
        return getattr(self.model, name)

    def rows(self, tile: np.ndarray, pos: np.ndarray) -> np.ndarray:
        k, m = self.tokens.shape[1], self.model
        if self._rows is None and self.tokens.size * m.digits * m.radix * 4 <= self.KEEP_BYTES:
            t_all, p_all = np.divmod(np.arange(self.tokens.size), k)
            self._rows = np.empty((self.tokens.size, m.digits, m.radix), np.int32)  # TOTAL < 2**31
            for i in range(0, self.tokens.size, BLOCK):
                self._rows[i:i + BLOCK] = digit_tables(m, self.tokens, t_all[i:i + BLOCK], p_all[i:i + BLOCK])
        if self._rows is None:
            return digit_tables(m, self.tokens, tile, pos)
        return self._rows[tile * k + pos]


def tables(model, tokens: np.ndarray, tile: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(n, digits, radix) integer tables of tokens[tile, pos] (digit_tables), shared with KnownTokens."""
    if isinstance(model, KnownTokens) and model.tokens is tokens:
        return model.rows(tile, pos)
    return digit_tables(model, tokens, tile, pos)


def token_check(symbols: np.ndarray) -> int:
    """16-bit check of a layer's decoded tokens: a wrong model or corrupt bytes show as a mismatch."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<u2").tobytes()) & 0xFFFF


def encode_layer(tokens: np.ndarray, before: np.ndarray, after: np.ndarray, model) -> tuple[bytes, int]:
    """Code tokens[t, before[t]:after[t]] of every tile -> (bytes, token check)."""
    tile, pos, per_step = layer_order(before, after)
    symbols = tokens[tile, pos].astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    ends = np.cumsum(per_step)
    start = 0
    while start < len(symbols):  # whole steps at a time, about BLOCK tokens (one step at least)
        end = int(ends[max(np.searchsorted(ends, start + BLOCK, "right") - 1, np.searchsorted(ends, start, "right"))])
        t, p = tile[start:end], pos[start:end]
        f = tables(model, tokens, t, p)                              # (n, digits, radix)
        if model.digits == 1:
            enc.encode(symbols[start:end], _FAMILY, f[:, 0] / TOTAL)  # exact: integers / 2**24
        else:  # step by step, digit by digit, tiles in order
            step = np.searchsorted(ends, np.arange(start, end), "right")
            token, digit = np.divmod(np.arange(f.shape[0] * model.digits), model.digits)
            order = np.lexsort((token, digit, step[token]))
            d = digits_of(symbols[start:end], model)
            enc.encode(d[token[order], digit[order]].astype(np.int32), _FAMILY,
                       f[token[order], digit[order]] / TOTAL)
        start = end
    return enc.get_compressed().astype("<u4").tobytes(), token_check(symbols)


def decode_layer(data: bytes, tokens: np.ndarray, before: np.ndarray, after: np.ndarray, model,
                 check: int | None = None, strict: bool = False) -> None:
    """Inverse of encode_layer: fills tokens[t, before[t]:after[t]] in place (earlier positions must be
    there). EntropyError for bytes that are no stream (constriction raises AssertionError or ValueError
    on some junk) or whose tokens fail `check`. `strict` (`odp info --verify`) also refuses bytes that
    are not exactly what encode_layer writes for the decoded tokens, such as a word appended to a
    stream: the decoder's end-of-data test cannot see one word too many."""
    if len(data) % 4:
        raise EntropyError("layer length is not a whole number of 32-bit words")
    if int(after.max(initial=0)) > model.positions:
        raise EntropyError(f"positions beyond the model's {model.positions}")
    tile, pos, per_step = layer_order(before, after)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    enc = constriction.stream.queue.RangeEncoder() if strict else None
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        i = 0
        for n in per_step:
            t, p = tile[i:i + n], pos[i:i + n]
            prepared = model.prepare(contexts(model, tokens, t, p), p)
            token = np.zeros(n, np.int64)
            for k in range(model.digits):
                probs = model.digit_frequencies(prepared, token, k) / TOTAL
                decoded = dec.decode(_FAMILY, probs)
                if enc is not None:  # re-code with the tables at hand: the same bytes as encode_layer's
                    enc.encode(decoded, _FAMILY, probs)
                token += decoded.astype(np.int64) * model.radix ** k
            tokens[t, p] = token
            i += n
    except (AssertionError, ValueError, RuntimeError) as e:
        raise EntropyError(str(e) or type(e).__name__) from None
    symbols = tokens[tile, pos]
    if check is not None and token_check(symbols) != check:
        raise EntropyError("decoded tokens fail their check: the file is corrupt or needs another model")
    if enc is not None and enc.get_compressed().astype("<u4").tobytes() != data:
        raise EntropyError("layer is not the exact coding of its tokens")
