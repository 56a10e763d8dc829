"""Range coding of token ids, one independent stream per chunk of token positions.

Tokens are coded position-major: all tiles' token j, then all tiles' token j+1, ...
A chunk covers a run of positions, so dropping the last chunks drops the last
tokens of every tile: a shorter file is a cut of a longer one.
"""
from __future__ import annotations

import constriction
import numpy as np

from .models import PositionTables

_Categorical = constriction.stream.model.Categorical


class EntropyError(ValueError):
    """A chunk whose bytes cannot be a range-coder stream."""


def chunk_bounds(kept: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """[(first position, end position)) of each chunk for `kept` tokens per tile."""
    return [(s, min(s + chunk_tokens, kept)) for s in range(0, kept, chunk_tokens)]


def encode_chunk(tokens: np.ndarray, start: int, model: PositionTables) -> bytes:
    """tokens (tiles, n) holding positions start..start+n-1 -> compressed bytes."""
    enc = constriction.stream.queue.RangeEncoder()
    for j in range(tokens.shape[1]):
        m = _Categorical(model.probabilities(start + j), perfect=False)
        enc.encode(np.ascontiguousarray(tokens[:, j], dtype=np.int32), m)
    return enc.get_compressed().astype("<u4").tobytes()


def decode_chunk(data: bytes, tiles: int, start: int, end: int, model: PositionTables,
                 strict: bool = False) -> np.ndarray:
    """Inverse of encode_chunk -> (tiles, end-start) int32. EntropyError for bytes that are no stream
    (constriction raises AssertionError or ValueError on some junk). `strict` (`odp info --verify`) also
    refuses bytes that are not exactly what encode_chunk writes for the decoded tokens, such as a word
    appended to a stream: the decoder's end-of-data test cannot see one word too many."""
    if len(data) % 4:
        raise EntropyError("chunk length is not a whole number of 32-bit words")
    if not 0 <= start <= end <= model.positions:
        raise EntropyError(f"positions {start}..{end - 1} are outside the model's {model.positions} tables")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    out = np.empty((tiles, end - start), np.int32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        for j in range(end - start):
            m = _Categorical(model.probabilities(start + j), perfect=False)
            out[:, j] = dec.decode(m, tiles)
    except (AssertionError, ValueError, RuntimeError) as e:
        raise EntropyError(str(e) or type(e).__name__) from None
    if strict and encode_chunk(out, start, model) != data:
        raise EntropyError(f"chunk of positions {start}..{end - 1} is not the exact coding of its tokens")
    return out


def encode_tokens(tokens: np.ndarray, chunk_tokens: int, model: PositionTables) -> list[bytes]:
    """tokens (tiles, kept) -> one compressed byte string per chunk."""
    return [encode_chunk(tokens[:, s:e], s, model) for s, e in chunk_bounds(tokens.shape[1], chunk_tokens)]


def decode_tokens(chunks: list[bytes], tiles: int, kept: int, chunk_tokens: int, model: PositionTables,
                  strict: bool = False) -> np.ndarray:
    """Chunks (possibly fewer than `kept` needs: a cut file) -> tokens (tiles, k)."""
    bounds = chunk_bounds(kept, chunk_tokens)[: len(chunks)]
    parts = [decode_chunk(c, tiles, s, e, model, strict) for c, (s, e) in zip(chunks, bounds)]
    return np.concatenate(parts, 1) if parts else np.zeros((tiles, 0), np.int32)
