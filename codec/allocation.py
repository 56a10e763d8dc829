"""How many tokens each tile gets: per-tile allocation weights and token caps (header fields).

A busy tile needs more tokens than a flat one for the same error. The encoder measures each
tile's error at a few token counts with the decoder and its exact code length with the entropy
model, and writes one weight and one cap per tile; every cut of the file then follows them.
"""
from __future__ import annotations

import numpy as np

from .engine import Engine
from .stream import token_bits

# Token counts at which the encoder decodes every tile to weigh it, and (the top ones) to find where
# its later tokens stop helping. ENCODER_VERSION names what the encoder writes, for caches of its
# files (odp bench): 3 caps a lone tile too, 4 leaves idle caps out of files.
ALLOCATION_GRID = (4, 16, 48, 128, 192, 256)
ENCODER_VERSION = 4


def allocation(toks: np.ndarray, pixels: np.ndarray, engine: Engine, entropy) -> tuple[bytes, bytes]:
    """Per-tile allocation weights and token caps (header fields; b"" when every tile is alike).

    Each tile is decoded at ALLOCATION_GRID token counts; its squared error and exact code length
    there give, for each Lagrange multiplier, the count that minimises error + lambda * bits. Those
    optimal counts are fitted as tile weight x level (least squares in log counts), which is what a
    power-law rate-distortion curve per tile predicts; one weight per tile keeps the header small
    and every cut of the file near the optimal allocation for its size. The cap of a tile is the
    count of its least error (refined between grid points near the top): the model's last tokens
    can make a tile worse, and without caps the busiest tiles would reach them first. A lone tile
    needs no weights but still gets its cap: its file ends there (the cap itself, idle, is not
    written), so the whole file is never worse than a cut of it.
    """
    tiles_n, k_max = toks.shape
    everyone = np.arange(tiles_n)
    grid = np.array(sorted({k for k in ALLOCATION_GRID if k < k_max} | {k_max}))
    err = np.stack([engine.tile_errors(toks, pixels, everyone, k) for k in grid], 1)
    caps = _caps(toks, pixels, engine, grid, err)
    if tiles_n == 1:
        weights = np.full(1, 255, np.uint8)
    else:
        rate = np.cumsum(token_bits(toks, entropy), 1)
        weights = _weights(grid, err, rate[:, grid - 1])
    cap_bytes = np.clip(caps * 255 // k_max, 1, 255).astype(np.uint8)  # ceil(c * K / 255) <= caps
    return (b"" if (weights == 255).all() else weights.tobytes(),
            b"" if (cap_bytes == 255).all() else cap_bytes.tobytes())


def _caps(toks, pixels, engine: Engine, grid, err) -> np.ndarray:
    """Token count of least error per tile: the best grid count, then the midpoints beside it
    (for counts from 128 up, where tokens are many and a cap saves bytes)."""
    best = np.argmin(err, 1)
    caps, least = grid[best], err[np.arange(len(err)), best]
    probes: dict[int, list[int]] = {}
    for t, j in enumerate(best):
        if grid[j] < 128:
            continue
        for a, b in ((j - 1, j), (j, j + 1)):
            if 0 <= a and b < len(grid) and grid[a] + 1 < grid[b]:
                probes.setdefault(int((grid[a] + grid[b]) // 2), []).append(t)
    for k, tiles in sorted(probes.items()):
        e = engine.tile_errors(toks, pixels, np.array(tiles), k)
        better = e < least[tiles]
        caps[np.array(tiles)[better]], least[np.array(tiles)[better]] = k, e[better]
    return caps


def _weights(grid: np.ndarray, err: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Allocation weights 1..255 fitted to the Lagrangian optimum counts (see allocation)."""
    tiles_n, k_max = len(err), grid[-1]
    logk, fit = [], []
    for lam in np.geomspace(1e-2, 1e5, 60) * err.mean() / rate.mean():
        k = grid[np.argmin(err + lam * rate, 1)]
        if 1 < np.median(k) < k_max:
            logk.append(np.log(k))
            fit.append((k > grid[0]) & (k < grid[-1]))  # counts at the grid's ends are clipped, not chosen
    if not logk:
        return np.full(tiles_n, 255, np.uint8)
    a, m = np.array(logk).T, np.array(fit).T.astype(float)  # (tiles, lambdas)
    tile_w, level = np.zeros(tiles_n), np.zeros(a.shape[1])
    for _ in range(20):  # alternating least squares for log k = tile_w + level
        tile_w = ((a - level) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        tile_w[m.sum(1) == 0] = (a - level).mean(1)[m.sum(1) == 0]
        level = ((a - tile_w[:, None]) * m).sum(0) / np.maximum(m.sum(0), 1e-9)
    return np.clip(np.round(255 * np.exp(tile_w - tile_w.max())), 1, 255).astype(np.uint8)
