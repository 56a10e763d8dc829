"""Probability models for token ids.

A model answers one question: the integer frequency table for token position j.
Tables are integers that sum to exactly 2**PRECISION_BITS and reach the coder as exact
binary fractions; constriction's deterministic fixed-point quantiser (pinned to 0.5.x)
does the rest, so encoder and decoder see identical probabilities on every machine.
A model codes each token as `digits` symbols of `radix` values (the token's base-radix digits, lowest
first): `prepare(contexts, positions)` once per token, then `digit_frequencies(prepared, lower, k)`
for each digit k given the digits below it. The models here, and entropy/context.py's ContextModel,
code a token as one symbol (digits = 1, radix = alphabet) and also answer `frequencies(contexts,
positions)`; these tables ignore the context.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

PRECISION_BITS = 24
TOTAL = 1 << PRECISION_BITS


@runtime_checkable
class EntropyModel(Protocol):
    """What the coder asks of a probability model (tests/test_entropy.py checks each model against it).

    `prepare(contexts, positions)` takes, for each of n tokens, the previous `lags` tokens of its
    tile (`contexts` (n, lags), `alphabet` where there is none, see coder.contexts; a model that
    ignores them has lags = 0) and its position; `digit_frequencies(prepared, lower, k)` then gives
    an int64 row of `radix` positive frequencies summing to TOTAL for digit k of each token, `lower`
    holding the value of its k lower digits (token % radix**k). `first_token_bits` bounds how many
    tiles a few bytes can describe.
    """

    id: str          # recorded in every file: the decoder must find the very same model
    lags: int        # previous tokens of the same tile it looks at
    digits: int      # symbols per token; alphabet == radix ** digits

    @property
    def alphabet(self) -> int: ...

    @property
    def radix(self) -> int: ...

    @property
    def positions(self) -> int: ...

    def prepare(self, contexts: np.ndarray, positions: np.ndarray): ...

    def digit_frequencies(self, prepared, lower: np.ndarray, k: int) -> np.ndarray: ...

    def first_token_bits(self) -> float: ...


class PositionTables:
    """One frequency table per token position, estimated on training tiles."""

    id = "pos-freq-v1"
    lags = 0  # previous tokens it looks at
    digits = 1

    def __init__(self, freqs: np.ndarray):
        freqs = np.asarray(freqs)
        if freqs.ndim != 2 or freqs.dtype != np.int64 and freqs.dtype != np.int32:
            raise ValueError("frequency tables must be a 2-D integer array (positions x codes)")
        if (freqs <= 0).any() or (freqs.sum(1) != TOTAL).any():
            raise ValueError(f"every table entry must be positive and each row must sum to 2**{PRECISION_BITS}")
        self.freqs = freqs.astype(np.int64, copy=False)

    @property
    def positions(self) -> int:
        return self.freqs.shape[0]

    @property
    def alphabet(self) -> int:
        return self.freqs.shape[1]

    radix = alphabet

    def frequencies(self, contexts: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.freqs[positions]

    def prepare(self, contexts: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return positions

    def digit_frequencies(self, positions: np.ndarray, lower: np.ndarray, k: int) -> np.ndarray:
        return self.freqs[positions]

    def first_token_bits(self) -> float:
        return float(PRECISION_BITS - np.log2(self.freqs[0].max()))

    def bits(self, tokens: np.ndarray) -> float:
        """Ideal code length in bits of tokens (tiles, k) under these tables."""
        k = tokens.shape[1]
        f = self.freqs[np.arange(k)[None, :], tokens]
        return float(-np.log2(f / TOTAL).sum())  # exact: integers / 2**24

    @classmethod
    def from_counts(cls, counts: np.ndarray, prior_weight: float) -> "PositionTables":
        """Smooth per-position counts towards the all-position marginal, then quantise.

        prior_weight is how many pseudo-observations of the marginal each row gets.
        """
        counts = counts.astype(np.float64)
        marginal = (counts.sum(0) + 1.0) / (counts.sum() + counts.shape[1])
        p = counts + prior_weight * marginal[None, :]
        p /= p.sum(1, keepdims=True)
        return cls(quantize(p))


def quantize(p: np.ndarray) -> np.ndarray:
    """Float probabilities (rows sum to 1) -> positive int64 rows summing to TOTAL."""
    n = p.shape[1]
    q = np.maximum(1, np.floor(p * (TOTAL - n)).astype(np.int64))
    # hand the remainder to the largest entries, one each, deterministically
    for row in range(q.shape[0]):
        rest = TOTAL - q[row].sum()
        order = np.argsort(-p[row], kind="stable")
        q[row, order[: abs(rest) % n]] += np.sign(rest)
        q[row] += np.sign(rest) * (abs(rest) // n)
    return q
