"""The network at work: one model on one device, tiles in batches, pixels <-> tokens.

Everything that runs the tokenizer goes through an Engine, so device choice, batch size and
the [-1, 1] pixel convention live in one place.
"""
from __future__ import annotations

import numpy as np

from . import tiling
from .imaging import gray_of, resize
from .workers import threads
from .network import open_network, pick_device  # noqa: F401  (pick_device re-exported)


def default_batch(device: str) -> int:
    """Tiles per network call: on the CPU enough for every thread to take one (net_onnx runs them side by side)."""
    return 64 if device == "cuda" else max(4, threads())


class Engine:
    """A model's tokenizer on a device ("auto": CUDA when torch sees a GPU) and backend (network.py),
    `batch` tiles per call.

    `progress(what, done, total)`, if set, hears after every batch how far the current pass over
    tiles has gone ("encoding", "decoding", or "scoring" for the allocation's trial decodes): a
    24-MP photo takes minutes on a CPU, and the command line shows a bar."""

    def __init__(self, model, device: str = "auto", batch: int | None = None, progress=None,
                 backend: str = "auto"):
        self.model = model                        # a registry Entry, or a weights.Model (torch network in hand)
        self.entry = getattr(model, "entry", model)
        self.net = open_network(model, device, backend)
        self.device, self.backend = self.net.device, self.net.backend
        self.batch = batch or default_batch(self.device)
        self.tile = self.entry.tile          # the tiles it codes
        self.out_tile = self.entry.out_tile  # ... and draws (smaller for a stage drawing at the display size)
        self.progress = progress

    def warm(self, *parts: str) -> None:
        """Let the network start opening what it will run ("encoder", "decoder") while the caller works on."""
        warm = getattr(self.net, "warm", None)  # (ONNX Runtime sessions; torch builds its network at once)
        if warm is not None:
            warm(*parts)

    def _report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    def encode(self, pixels: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        """(H, W, 3) uint8 -> tokens (tiles, K) int32, tile by tile in batches. `cond`: for a refinement
        stage's model, the picture so far at the same size (its tiles go with the image's)."""
        cols, rows = tiling.grid(pixels.shape[1], pixels.shape[0], self.tile)
        conds = tiling.iter_tile_batches(cond, self.tile, self.batch) if cond is not None else None
        out, done = [], 0
        for tiles in tiling.iter_tile_batches(pixels, self.tile, self.batch):
            out.append(self.net.encode(tiles) if conds is None else self.net.encode(tiles, next(conds)))
            done += len(tiles)
            self._report("encoding", done, cols * rows)
        return np.concatenate(out)

    def encode_many(self, pixel_list: list[np.ndarray]) -> list[np.ndarray]:
        """Several (H, W, 3) uint8 images -> tokens (tiles, K) int32 of each; a batch may mix images' tiles."""
        def batches():
            pending: list[np.ndarray] = []
            for px in pixel_list:
                for tiles in tiling.iter_tile_batches(px, self.tile, self.batch):
                    pending.append(tiles)
                    while sum(len(t) for t in pending) >= self.batch:
                        joined = np.concatenate(pending)
                        yield joined[:self.batch]
                        pending = [joined[self.batch:]]
            if sum(len(t) for t in pending):
                yield np.concatenate(pending)

        out = [self.net.encode(tiles) for tiles in batches()]
        counts = [tiling.grid(px.shape[1], px.shape[0], self.tile) for px in pixel_list]
        return np.split(np.concatenate(out), np.cumsum([c * r for c, r in counts])[:-1])

    def decode(self, tokens: np.ndarray, width: int, height: int, counts: np.ndarray | None = None,
               cond: np.ndarray | None = None) -> np.ndarray:
        """tokens (tiles, k) of a width x height image, of which tile t uses its first counts[t] (default
        all k) -> the picture, (H, W, 3) uint8; a model that draws smaller (`out_shrink`) draws it that many
        times smaller each side. `cond`: for a refinement stage's model, the picture so far, (H, W, 3)
        uint8 at the size drawn.

        Tiles with equal counts go through the network together, given exactly their tokens."""
        counts = np.full(len(tokens), tokens.shape[1]) if counts is None else np.asarray(counts)
        shrink, out = self.entry.out_shrink, self.out_tile
        if width % shrink or height % shrink:
            raise ValueError(f"{width}x{height} is not a whole multiple of {shrink}, the model's out_shrink")
        width, height = width // shrink, height // shrink
        cond_tiles = None if cond is None else tiling.all_tiles(cond, out)
        canvas = np.empty((height, width, 3), np.uint8)
        done = 0
        for k in np.unique(counts):
            rows = np.flatnonzero(counts == k)
            for i in range(0, len(rows), self.batch):
                sel = rows[i:i + self.batch]
                tiles = (self.net.decode(tokens[sel, :k]) if cond_tiles is None
                         else self.net.decode(tokens[sel, :k], cond_tiles[sel]))
                for j, t in enumerate(sel):
                    tiling.place_tiles(canvas, tiles[j:j + 1], int(t), out)
                done += len(sel)
                self._report("decoding", done, len(counts))
        tiling.deblock(canvas, out, *tiling.deblock_reach(shrink))
        return canvas

    def tile_errors(self, tokens: np.ndarray, pixels: np.ndarray, tiles: np.ndarray, k: int,
                    cond_tiles: np.ndarray | None = None) -> np.ndarray:
        """Squared error (summed over pixels) of each of `tiles` decoded from its first k tokens
        (`cond_tiles`: a refinement stage's picture so far, every tile's, in tile order; `pixels` and
        `cond_tiles` at the size the model draws)."""
        h, w = pixels.shape[:2]
        size = self.out_tile
        out = np.empty(len(tiles))
        for i in range(0, len(tiles), self.batch):
            sel = tiles[i:i + self.batch]
            y = (self.net.decode(tokens[sel, :k]) if cond_tiles is None
                 else self.net.decode(tokens[sel, :k], cond_tiles[sel])).astype(np.float64)
            for j, t in enumerate(sel):
                r, c = divmod(int(t), -(-w // size))
                y0, x0 = r * size, c * size
                y1, x1 = min(h, y0 + size), min(w, x0 + size)
                out[i + j] = ((y[j, :y1 - y0, :x1 - x0] - pixels[y0:y1, x0:x1]) ** 2).sum()
            self._report("scoring", i + len(sel), len(tiles))
        return out

    def picture(self, tokens: np.ndarray, header, level: int) -> np.ndarray:
        """What a decoder shows of a first stage's `tokens` cut at `level` (its container header says
        how), as (H, W, 3) uint8 at the display size: a greyscale file's one channel repeated, so
        quality targets measure the picture the user gets."""
        h = header
        pixels = resize(self.decode(tokens, h.width, h.height, np.array(h.counts(level))), h.display_size)
        return np.repeat(gray_of(pixels)[..., None], 3, axis=2) if h.gray else pixels
