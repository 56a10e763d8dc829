"""How many tokens each tile gets: per-tile allocation weights and token caps (header fields).

A busy tile needs more tokens than a flat one for the same error. The encoder measures each
tile's error at a few token counts with the decoder and its exact code length with the entropy
model, and writes one weight and one cap per tile; every cut of the file then follows them.
"""
from __future__ import annotations

import numpy as np

from . import tiling
from .engine import Engine
from .stream import token_bits
from .workers import run_all

# Token counts at which the encoder decodes every tile to weigh it, and (the top ones) to find where
# its later tokens stop helping. ENCODER_VERSION names what the encoder writes, for caches of its
# files (odp bench): 3 caps a lone tile too, 4 leaves idle caps out of files, 5 predicts the errors.
ALLOCATION_GRID = (4, 16, 48, 128, 192, 256)
ENCODER_VERSION = 21 # 5: errors predicted, not measured; 6: coded larger where a budget leaves bytes;
                     # 7: the refinement stage where a budget leaves bytes past the first stage;
                     # 8: a third stage (the refinement model at 4x) past the refinement stage's whole;
                     # 9: a version-4 file whose tokens' share holds no layer gives its thumbnail the whole budget
                     # 10: bases stored in the frame forms (thumbnail.STORED): 27-35 bytes more for them
                     # 11: a file that is its thumbnail alone names the model trained for it (thumbnail_model)
                     # 12: a version-4 cut of one layer gives way to the thumbnail alone (ALONE_MAX_LAYERS)
                     # 13: the ONNX graphs multiply by weight matrices in 8 bits, a tile per call
                     # 14: a budget whose share holds no thumbnail but whose whole does: the thumbnail alone;
                     #     a budget just under the lowest quality's thumbnail looks a few qualities on
                     # 15: a version-4 file on a base shrunk at most twice takes part of its low band
                     # 16: the base's share of a version-4 file's budget 0.9 -> 0.95
                     # 17: a budget under every 1/8-size thumbnail takes a 1/16-size one (FALLBACK_SHRINKS)
                     # 18: the chosen AVIF base made again at speed 5 where better (thumbnail.FINER)
                     # 19: no third stage after a version-4 file's whole (ratecontrol.based_within)
                     # 20: AVIF bases searched up to quality 95 (was 50: thumbnail.QUALITIES)
                     # 21: graphs whose last transformer block computes only the rows kept: a few tokens differ
# Block sizes at which tile_features measures the detail a blocky approximation misses.
FEATURE_SCALES = (2, 4, 8, 16, 32, 64, 256)
# Token counts at which the allocation predictor gives each tile's error (ALLOCATION_GRID and the
# midpoints near the top where caps fall).
PREDICTED_COUNTS = (4, 16, 48, 128, 160, 192, 224, 256)
PREDICTED_CAP_FLOOR = 128  # predicted caps fall at or above this count, where a wrong guess costs little


def allocation(toks: np.ndarray, pixels: np.ndarray, engine: Engine, entropy,
               measure: bool = False, cond: np.ndarray | None = None) -> tuple[bytes, bytes]:
    """Per-tile allocation weights and token caps (header fields; b"" when every tile is alike).

    Each tile's squared error at the token counts of ALLOCATION_GRID is predicted from its pixels and
    code lengths (`predicted_errors`, one matrix product, where the model ships a predictor), or
    measured by decoding the tile at each count (`measure`, a model without a predictor, or a lone
    tile, whose whole file must be no worse than any cut and whose few decodes cost little). The
    errors and the exact code lengths give, for each Lagrange multiplier, the count that minimises error + lambda * bits. Those
    optimal counts are fitted as tile weight x level (least squares in log counts), which is what a
    power-law rate-distortion curve per tile predicts; one weight per tile keeps the header small
    and every cut of the file near the optimal allocation for its size. The cap of a tile is the
    count of its least error (refined between grid points near the top): the model's last tokens
    can make a tile worse, and without caps the busiest tiles would reach them first. A lone tile
    needs no weights but still gets its cap: its file ends there (the cap itself, idle, is not
    written), so the whole file is never worse than a cut of it. `cond`: a refinement stage's picture
    so far (the size of `pixels`), which its errors are measured with; both at the size the model
    draws (the display size for a stage with `out_shrink`).
    """
    tiles_n, k_max = toks.shape
    grid = np.array(sorted({k for k in ALLOCATION_GRID if k < k_max} | {k_max}))
    bits = token_bits(toks, entropy)
    predictor = getattr(engine.entry, "allocation", None)
    cond_tiles = None if cond is None else tiling.all_tiles(cond, engine.out_tile)
    if not measure and cond is None and tiles_n > 1 and fits(predictor, k_max):
        counts = np.array(PREDICTED_COUNTS)
        predicted = predicted_errors(predictor, pixels, engine.tile, bits)
        err = predicted[:, np.searchsorted(counts, grid)]
        cap_counts = predictor["cap_counts"]  # where the model's tiles do end (allocfit.fit): a tail only
        caps = cap_counts[np.argmin(predicted[:, np.searchsorted(counts, cap_counts)], 1)]
    else:
        err = np.stack([engine.tile_errors(toks, pixels, np.arange(tiles_n), k, cond_tiles) for k in grid], 1)
        caps = _caps(toks, pixels, engine, grid, err, cond_tiles)
    if tiles_n == 1:
        weights = np.full(1, 255, np.uint8)
    else:
        weights = _weights(grid, err, np.cumsum(bits, 1)[:, grid - 1])
    cap_bytes = np.clip(caps * 255 // k_max, 1, 255).astype(np.uint8)  # ceil(c * K / 255) <= caps
    return (b"" if (weights == 255).all() else weights.tobytes(),
            b"" if (cap_bytes == 255).all() else cap_bytes.tobytes())


def _caps(toks, pixels, engine: Engine, grid, err, cond_tiles=None) -> np.ndarray:
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
        e = engine.tile_errors(toks, pixels, np.array(tiles), k, cond_tiles)
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


def tile_features(pixels: np.ndarray, tile: int, bits: np.ndarray, counts) -> np.ndarray:
    """(tiles, len(counts), F) what predicts a tile's error at each token count, without decoding it.

    For each block size s of FEATURE_SCALES, the log mean squared difference between the tile and
    its s x s block means (over the tile's pixels inside the image): how much detail there is at
    each scale. Then the log mean code length per token of the first 16 tokens and of all, and of
    the first k tokens for each count k: the encoder's own measure of how busy the tile is.
    """
    h, w = pixels.shape[:2]
    boxes = tiling.tile_boxes(w, h, tile)

    def detail_of(i: int) -> list[float]:
        x0, y0, x1, y1 = boxes[i]
        x = next(tiling.iter_tile_batches(pixels[y0:y1, x0:x1], tile, 1))[0].astype(np.float32)
        out = []
        for s in FEATURE_SCALES:
            n = tile // s
            means = x.reshape(n, s, n, s, 3).mean((1, 3))
            diff = x - np.repeat(np.repeat(means, s, 0), s, 1)
            out.append(np.log(np.mean(diff[:y1 - y0, :x1 - x0] ** 2) + 1))
        return out

    detail = np.array(run_all(detail_of, range(len(boxes))), np.float64).reshape(len(boxes), len(FEATURE_SCALES))
    per_token = np.cumsum(bits, 1) / np.arange(1, bits.shape[1] + 1)
    fixed = np.concatenate([detail, np.log(per_token[:, [15, -1]] + 0.1)], 1)
    at_k = np.log(per_token[:, np.asarray(counts) - 1] + 0.1)
    return np.concatenate([np.repeat(fixed[:, None], len(counts), 1), at_k[..., None]], 2)


def fits(predictor: dict | None, k_max: int) -> bool:
    """Whether a model's predictor (registry.Entry.allocation) is one this code can use."""
    return (predictor is not None and k_max == max(PREDICTED_COUNTS)
            and tuple(predictor["counts"]) == PREDICTED_COUNTS
            and predictor["coef"].shape[1] == DESIGN_WIDTH
            and "cap_counts" in predictor and set(predictor["cap_counts"]) <= set(PREDICTED_COUNTS))


def design(x: np.ndarray) -> np.ndarray:
    """Features (..., F) -> the regression's inputs: the features, a constant, and every product of two
    features (the error's dependence on detail and code length is not log-linear; cross-validated on
    training tiles, the products cut the error of the predicted log error from about 0.40 to 0.33)."""
    i, j = np.triu_indices(x.shape[-1])
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,)), x[..., i] * x[..., j]], -1)


FEATURES = len(FEATURE_SCALES) + 3
DESIGN_WIDTH = FEATURES + 1 + FEATURES * (FEATURES + 1) // 2


def predicted_errors(predictor: dict, pixels: np.ndarray, tile: int, bits: np.ndarray) -> np.ndarray:
    """(tiles, len(PREDICTED_COUNTS)) squared error summed over each tile's pixels, as tile_errors
    measures it, predicted by the model's fitted regression (codec/training/allocfit.py) of the log
    mean squared error on tile_features."""
    x = design(tile_features(pixels, tile, bits, PREDICTED_COUNTS))
    log_mse = np.einsum("tkf,kf->tk", x, predictor["coef"])
    return np.exp(log_mse) * 3 * tile_areas(pixels, tile)[:, None]


def tile_areas(pixels: np.ndarray, tile: int) -> np.ndarray:
    """Pixels of each tile inside the image (edge tiles are partial)."""
    h, w = pixels.shape[:2]
    return np.array([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tiling.tile_boxes(w, h, tile)])
