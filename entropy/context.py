"""Context model: the probability of a tile's next token given its previous tokens, in integers.

An MLP language model (shared token embedding of the previous LAGS tokens, one hidden
layer with a per-position bias, softmax over the codebook) trained in floating point
(codec/training/context.py) and shipped quantised: 12-bit embeddings, 8-bit weights, integer
biases, a shipped integer exp table. Inference uses only integers, so encoder and decoder
compute the same frequency tables on every machine:

- the two matrix products run in float64 BLAS on integer values whose every partial sum stays
  below 2**53, so each is exact whatever the summation order, thread count or SIMD. For a few rows
  at a time (decoding: one per tile), where reading the weights bounds the time, they run in
  float32 instead, on integers split into limbs (a = sum(limb_i * 2**(b*i))) narrow enough that
  every partial sum of each limb's product stays below 2**24: exact the same way, recombined in
  float64, half the bytes read (verifying a two-stage 768x511 file in-process: 1.25 s -> 0.85 s, measured);
- everything else (requantisation, softmax, normalisation to 2**24) is int64 arithmetic.

No torch at run time: numpy only.
"""
from __future__ import annotations

import numpy as np

from .models import PRECISION_BITS, TOTAL

CHUNK_ROWS = 256  # rows computed at once: a whole layer's (n, V) int64 temporaries, in place, chunk by chunk (2x faster, measured)
FEW_ROWS = 64  # below this many symbols at once, BLAS threads cost more than they save (measured, docs/format.md)
LIMB_ROWS = 32  # below this many rows, float32 limbs beat one float64 product (measured: 2x at 6 rows, even at ~40)
_blas = None


def _one_blas_thread():
    """A context in which numpy's BLAS runs on one thread: the coder asks for a few rows at a time
    (one per tile), and waking a second thread for a 6 x 256 x 4096 product doubles its time on a busy
    2-core machine. The result is exact either way (exact integer products)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _row_sum(w: np.ndarray) -> float:
    """Largest sum of |weights| over one output (w is (out, in)): a product's partial sums per unit input."""
    return float(np.abs(w.astype(np.int64)).sum(1).max())


def _limb_layout(a_max: float, row_sum: float) -> tuple[int, int]:
    """(bits, count): split integers up to a_max in magnitude into `count` limbs of `bits` (the last one
    signed and unbounded) so that each limb's products with weights of this _row_sum keep every partial
    sum below 2**24. (0, 0) when no split can."""
    bits = 24
    while bits > 0 and (2 ** bits - 1) * row_sum >= 2.0 ** 24:
        bits -= 1
    if bits == 0:
        return 0, 0
    count = 1
    while (np.floor(a_max / 2.0 ** (bits * (count - 1))) + 1) * row_sum >= 2.0 ** 24:
        count += 1
    return bits, count


def _limbs(a: np.ndarray, bits: int, count: int) -> list[np.ndarray]:
    """Integer-valued a -> limbs with a = sum(limb[i] * 2**(bits * i)), all but the last in [0, 2**bits)."""
    out = []
    for _ in range(count - 1):
        hi = np.floor(a * 2.0 ** -bits)
        out.append(a - hi * 2.0 ** bits)
        a = hi
    return out + [a]


def _product(limbs: list[np.ndarray], wt: np.ndarray, bits: int) -> np.ndarray:
    """(sum(limb[i] * 2**(bits * i))) @ wt, exact in float64: each limb's float32 product has only integer
    partial sums below 2**24, whatever the summation order. Upper limbs are mostly zero (a few large
    activations): each multiplies only the weight rows it uses."""
    out = (limbs[0].astype(np.float32, copy=False) @ wt).astype(np.float64)
    for i, limb in enumerate(limbs[1:], 1):
        used = np.flatnonzero(limb.any(0))
        if 2 * len(used) < wt.shape[0]:
            if not len(used):
                continue
            part = limb[:, used].astype(np.float32) @ wt[used]
        else:
            part = limb.astype(np.float32) @ wt
        out += part.astype(np.float64) * 2.0 ** (bits * i)
    return out


class _Hidden:
    """What both context models share: embeddings of the previous `lags` tokens, one hidden layer with a
    per-position bias, computed exactly in integers (`_pre_activation`), and the integer softmax."""

    def __init__(self, id: str, tensors: dict[str, np.ndarray], meta: dict[str, str], names: tuple[str, ...]):
        self.id = id
        self.lags = int(meta["lags"])
        self.shift1, self.mult, self.shift2 = int(meta["shift1"]), int(meta["mult"]), int(meta["shift2"])
        for name in ("emb", "w1", "pos_bias", "b2", "exp_lut") + names:
            if name not in tensors:
                raise ValueError(f"context model {self.id}: no tensor {name}")
            if tensors[name].dtype.kind not in "iu":
                raise ValueError(f"context model {self.id}: {name} is not integer")
        emb = tensors["emb"].astype(np.float64)                # (V + 1, D) integers: row V is PAD
        self.alphabet = emb.shape[0] - 1
        self.emb = emb
        # transposed while still 8-bit, then widened: the cheap order (the products are faster on
        # contiguous matrices than on transposed views, measured)
        self.w1t = np.ascontiguousarray(tensors["w1"].T).astype(np.float64)  # (lags * D, H)
        self.w1t32 = self.w1t.astype(np.float32)
        self.pos_bias = tensors["pos_bias"].astype(np.float64)  # (K, H): position and layer-1 bias
        self.exp_lut = tensors["exp_lut"].astype(np.int64)  # exp(-i / unit) * 2**20, >= 1
        self.x_max = float(np.abs(emb).max())
        self.sum1 = _row_sum(tensors["w1"])
        self.bits1, count1 = _limb_layout(self.x_max, self.sum1)
        if not count1:
            raise ValueError(f"context model {self.id} has parameters too large for exact integer inference")
        self.emb_limbs = [x.astype(np.float32) for x in _limbs(emb, self.bits1, count1)]

    @property
    def positions(self) -> int:
        return self.pos_bias.shape[0]

    def _pre_activation(self, ctx: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The hidden layer before its ReLU: exact integers in float64."""
        n = len(positions)
        if n < LIMB_ROWS:
            h = _product([e[ctx].reshape(n, -1) for e in self.emb_limbs], self.w1t32, self.bits1)
        else:
            h = self.emb[ctx].reshape(n, -1) @ self.w1t                 # exact integers in float64
        h += self.pos_bias[positions]
        return h

    def _requantised(self, h: np.ndarray) -> np.ndarray:
        """ReLU, then >> shift1, in place (exact: a power of two, then floor)."""
        np.maximum(h, 0, out=h)
        h *= 2.0 ** -self.shift1
        np.floor(h, out=h)
        return h

    def _softmax(self, z: np.ndarray, b2_round: np.ndarray) -> np.ndarray:
        """Exact integer products z (n, A) -> int64 frequency rows summing to TOTAL, each entry >= 1."""
        logit = z.astype(np.int64)                                    # exact integers
        logit *= self.mult
        logit += b2_round
        logit >>= self.shift2
        d = np.subtract(logit.max(1, keepdims=True), logit, out=logit)
        np.minimum(d, len(self.exp_lut) - 1, out=d)
        q = self.exp_lut[d]
        total = q.sum(1, keepdims=True)
        q *= TOTAL - q.shape[1]
        q //= total
        q += 1                                                        # every code >= 1, sum <= TOTAL
        q[np.arange(len(q)), q.argmax(1)] += TOTAL - q.sum(1)
        return q


class ContextModel(_Hidden):
    """Integer MLP over the previous `lags` tokens of the same tile, one softmax over the whole codebook."""

    digits = 1  # the coder's view (models.EntropyModel): each token is one symbol of the whole alphabet

    def __init__(self, id: str, tensors: dict[str, np.ndarray], meta: dict[str, str]):
        super().__init__(id, tensors, meta, ("w2",))
        self.radix = self.alphabet
        self.w2t = np.ascontiguousarray(tensors["w2"].T).astype(np.float64)  # (H, V)
        self.w2t32 = self.w2t.astype(np.float32)
        self.b2 = tensors["b2"].astype(np.int64)           # (V,) in final logit units << shift2
        self.b2_round = self.b2 + (1 << (self.shift2 - 1))  # the bias with the rounding of >> shift2
        # bounds of every integer on the way, and the limbs that keep each product exact in float32
        sum2 = _row_sum(tensors["w2"])
        h_max = self.x_max * self.sum1 + float(np.abs(self.pos_bias).max())
        h_scaled = float(np.floor(h_max / 2 ** self.shift1))
        z_max = h_scaled * sum2
        self.bits2, self.count2 = _limb_layout(h_scaled, sum2)
        if h_max >= 2.0 ** 52 or z_max >= 2.0 ** 52 or not self.count2 \
                or z_max * self.mult + float(np.abs(self.b2).max()) >= 2.0 ** 62:
            raise ValueError(f"context model {self.id} has parameters too large for exact integer inference")

    def frequencies(self, ctx: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Contexts (n, lags) of token ids (the alphabet size where there is none: coder.contexts) at `positions` -> (n, V) int64 rows summing to 2**24."""
        if len(positions) < FEW_ROWS:
            with _one_blas_thread():
                return self._frequencies(ctx, positions)
        return self._frequencies(ctx, positions)

    def _frequencies(self, ctx: np.ndarray, positions: np.ndarray) -> np.ndarray:
        n = len(positions)
        if n > CHUNK_ROWS:  # (n, V) int64 temporaries of a whole layer would not stay in cache
            return np.concatenate([self._frequencies(ctx[i:i + CHUNK_ROWS], positions[i:i + CHUNK_ROWS])
                                   for i in range(0, n, CHUNK_ROWS)])
        h = self._requantised(self._pre_activation(ctx, positions))
        z = _product(_limbs(h, self.bits2, self.count2), self.w2t32, self.bits2) if n < LIMB_ROWS else h @ self.w2t
        return self._softmax(z, self.b2_round)

    def prepare(self, ctx: np.ndarray, positions: np.ndarray):
        return ctx, positions

    def digit_frequencies(self, prepared, lower: np.ndarray, k: int) -> np.ndarray:
        return self.frequencies(*prepared)

    def first_token_bits(self) -> float:
        """Fewest bits a tile's first token can cost: bounds how many tiles a few bytes can describe."""
        f = self.frequencies(np.full((1, self.lags), self.alphabet), np.zeros(1, np.int64))
        return float(PRECISION_BITS - np.log2(f.max()))


class DigitContextModel(_Hidden):
    """Integer MLP over the previous `lags` tokens that codes each token as `digits` base-`radix` digits,
    lowest first (for FSQ codes, one digit per latent channel).

    The hidden layer's pre-activation is computed once per token; digit k's table adds to it an offset
    learnt for the k lower digits already known, then takes a ReLU and a (hidden x radix) product. Against
    ContextModel's one softmax over the whole codebook (a hidden x 4096 product and 4096-entry integer
    softmax per token, most of the decoder's time) this is a few hundred multiply-adds per digit, with
    the same exactness: integer values, float64 products whose partial sums stay below 2**53.
    """

    def __init__(self, id: str, tensors: dict[str, np.ndarray], meta: dict[str, str]):
        super().__init__(id, tensors, meta, ("w2", "prefix_bias"))
        self.digits, self.radix = int(meta["digits"]), int(meta["radix"])
        w2, b2, prefix = tensors["w2"], tensors["b2"], tensors["prefix_bias"]
        hidden = self.pos_bias.shape[1]
        if self.radix < 2 or self.digits < 1 or self.radix ** self.digits != self.alphabet \
                or w2.shape != (self.digits, self.radix, hidden) or b2.shape != (self.digits, self.radix) \
                or prefix.shape != (self.prefix_rows(self.digits), hidden):
            raise ValueError(f"context model {self.id}: digit tensors do not fit {self.digits} digits of {self.radix}")
        # digit k's offsets start at row prefix_rows(k): one row per value of the k lower digits
        self.prefix_bias = prefix.astype(np.float64)
        self._first_token_bits = None
        self.w2t = np.ascontiguousarray(np.transpose(w2, (0, 2, 1))).astype(np.float64)  # (G, H, R)
        self.b2_round = b2.astype(np.int64) + (1 << (self.shift2 - 1))
        h_max = self.x_max * self.sum1 + float(np.abs(self.pos_bias).max()) + float(np.abs(self.prefix_bias).max())
        z_max = float(np.floor(h_max / 2 ** self.shift1)) * max(_row_sum(w) for w in w2)
        if h_max >= 2.0 ** 52 or z_max >= 2.0 ** 52 or z_max * self.mult + float(np.abs(b2).max()) >= 2.0 ** 62:
            raise ValueError(f"context model {self.id} has parameters too large for exact integer inference")

    def prefix_rows(self, k: int) -> int:
        """Offset rows of the digits before digit k: radix**0 + ... + radix**(k-1)."""
        return sum(self.radix ** j for j in range(k))

    def prepare(self, ctx: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Contexts (n, lags) at `positions` -> the hidden pre-activations every digit's table starts from."""
        if len(positions) < FEW_ROWS:
            with _one_blas_thread():
                return self._pre_activation(ctx, positions)
        return self._pre_activation(ctx, positions)

    def digit_frequencies(self, pre: np.ndarray, lower: np.ndarray, k: int) -> np.ndarray:
        """(n, radix) int64 rows summing to 2**24: digit k of each token, given `pre` (from `prepare`) and
        `lower`, the value of the token's k lower digits (token % radix**k)."""
        h = self._requantised(pre + self.prefix_bias[self.prefix_rows(k) + np.asarray(lower, np.int64)])
        return self._softmax(h @ self.w2t[k], self.b2_round[k])

    def token_bits(self, ctx: np.ndarray, positions: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Ideal code length in bits of each of `tokens` (n,) in its context."""
        return self._bits(self.prepare(ctx, positions), tokens)

    def _bits(self, pre: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        bits, lower = np.zeros(len(tokens)), np.zeros(len(tokens), np.int64)
        for k in range(self.digits):
            d = tokens // self.radix ** k % self.radix
            f = self.digit_frequencies(pre, lower, k)
            bits += PRECISION_BITS - np.log2(f[np.arange(len(d)), d])
            lower += d * self.radix ** k
        return bits

    def first_token_bits(self) -> float:
        """Fewest bits a tile's first token can cost (the cheapest of all tokens, each digit given those
        below it): bounds how many tiles a few bytes can describe. Every first token has the same
        (empty) context: its hidden layer is computed once and shared by all of them."""
        if self._first_token_bits is None:
            pre = self.prepare(np.full((1, self.lags), self.alphabet), np.zeros(1, np.int64))
            # digit by digit, each table once per value of the digits below it (radix**k rows, not one per
            # token): bits[lower] of every value of the k lower digits, summed in the order _bits sums them
            bits = np.zeros(1)
            for k in range(self.digits):
                lower = np.arange(self.radix ** k)
                f = self.digit_frequencies(np.repeat(pre, len(lower), 0), lower, k)   # (radix**k, radix)
                bits = (bits[:, None] + (PRECISION_BITS - np.log2(f))).T.reshape(-1)  # token = lower + d * radix**k
            self._first_token_bits = float(bits[:self.alphabet].min())
        return self._first_token_bits
