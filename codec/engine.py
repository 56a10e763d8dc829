"""The network at work: one model on one device, tiles in batches, pixels <-> tokens.

Everything that runs the tokenizer goes through an Engine, so device choice, batch size and
the [-1, 1] pixel convention live in one place.
"""
from __future__ import annotations

import numpy as np
import torch

from . import tiling
from .weights import Model


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return device


def default_batch(device: str) -> int:
    return 64 if device == "cuda" else 4


def _to_model(tiles: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def _to_pixels(y: torch.Tensor) -> np.ndarray:
    return torch.round((y + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Engine:
    """A model's tokenizer on a device ("auto": CUDA when torch sees a GPU), `batch` tiles per call.

    `progress(what, done, total)`, if set, hears after every batch how far the current pass over
    tiles has gone ("encoding", "decoding", or "scoring" for the allocation's trial decodes): a
    24-MP photo takes minutes on a CPU, and the command line shows a bar."""

    def __init__(self, model: Model, device: str = "auto", batch: int | None = None, progress=None):
        self.model = model
        self.device = pick_device(device)
        self.batch = batch or default_batch(self.device)
        self.tile = model.config.tile
        self.net = model.tokenizer.to(self.device)
        self.progress = progress

    def _report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> tokens (tiles, K) int32, tile by tile in batches."""
        cols, rows = tiling.grid(pixels.shape[1], pixels.shape[0], self.tile)
        out, done = [], 0
        for tiles in tiling.iter_tile_batches(pixels, self.tile, self.batch):
            out.append(self.net.encode(_to_model(tiles, self.device)).cpu().numpy().astype(np.int32))
            done += len(tiles)
            self._report("encoding", done, cols * rows)
        return np.concatenate(out)

    @torch.inference_mode()
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

        out = [self.net.encode(_to_model(tiles, self.device)).cpu().numpy().astype(np.int32) for tiles in batches()]
        counts = [tiling.grid(px.shape[1], px.shape[0], self.tile) for px in pixel_list]
        return np.split(np.concatenate(out), np.cumsum([c * r for c, r in counts])[:-1])

    @torch.inference_mode()
    def decode(self, tokens: np.ndarray, width: int, height: int, counts: np.ndarray | None = None) -> np.ndarray:
        """tokens (tiles, k), of which tile t uses its first counts[t] (default all k) -> (H, W, 3) uint8.

        Tiles with equal counts go through the network together, given exactly their tokens."""
        counts = np.full(len(tokens), tokens.shape[1]) if counts is None else np.asarray(counts)
        canvas = np.empty((height, width, 3), np.uint8)
        done = 0
        for k in np.unique(counts):
            rows = np.flatnonzero(counts == k)
            for i in range(0, len(rows), self.batch):
                sel = rows[i:i + self.batch]
                ids = torch.from_numpy(tokens[sel, :k].astype(np.int64)).to(self.device)
                tiles = _to_pixels(self.net.decode(ids))
                for j, t in enumerate(sel):
                    tiling.place_tiles(canvas, tiles[j:j + 1], int(t), self.tile)
                done += len(sel)
                self._report("decoding", done, len(counts))
        tiling.deblock(canvas, self.tile)
        return canvas

    @torch.inference_mode()
    def tile_errors(self, tokens: np.ndarray, pixels: np.ndarray, tiles: np.ndarray, k: int) -> np.ndarray:
        """Squared error (summed over pixels) of each of `tiles` decoded from its first k tokens."""
        h, w = pixels.shape[:2]
        out = np.empty(len(tiles))
        for i in range(0, len(tiles), self.batch):
            sel = tiles[i:i + self.batch]
            y = self.net.decode(torch.from_numpy(tokens[sel, :k].astype(np.int64)).to(self.device))
            y = torch.round((y + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
            for j, t in enumerate(sel):
                r, c = divmod(int(t), -(-w // self.tile))
                y0, x0 = r * self.tile, c * self.tile
                y1, x1 = min(h, y0 + self.tile), min(w, x0 + self.tile)
                out[i + j] = ((y[j, :y1 - y0, :x1 - x0] - pixels[y0:y1, x0:x1]) ** 2).sum()
            self._report("scoring", i + len(sel), len(tiles))
        return out
