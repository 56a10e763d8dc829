"""Split images into fixed-size tiles and put them back.

Edge tiles are padded by reflection so the model never sees hard borders; decoding
crops each tile back, so the output is exactly W x H. Tiles are produced in batches
so memory is bounded by the batch, not the image.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def grid(width: int, height: int, tile: int) -> tuple[int, int]:
    """(columns, rows) of tiles covering the image."""
    return -(-width // tile), -(-height // tile)


def tile_boxes(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each tile in row-major order, clipped to the image."""
    cols, rows = grid(width, height, tile)
    return [(c * tile, r * tile, min((c + 1) * tile, width), min((r + 1) * tile, height))
            for r in range(rows) for c in range(cols)]


def iter_tile_batches(image: np.ndarray, tile: int, batch: int) -> Iterator[np.ndarray]:
    """image (H, W, 3) uint8 -> batches (B, tile, tile, 3) uint8, reflect-padded."""
    h, w = image.shape[:2]
    boxes = tile_boxes(w, h, tile)
    for i in range(0, len(boxes), batch):
        out = np.empty((len(boxes[i:i + batch]), tile, tile, 3), np.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes[i:i + batch]):
            crop = image[y0:y1, x0:x1]
            out[j] = np.pad(crop, ((0, tile - (y1 - y0)), (0, tile - (x1 - x0)), (0, 0)), mode="reflect")
        yield out


def place_tiles(canvas: np.ndarray, tiles: np.ndarray, first: int, tile: int) -> None:
    """Write decoded tiles (B, tile, tile, 3), starting at tile index `first`, into canvas."""
    h, w = canvas.shape[:2]
    boxes = tile_boxes(w, h, tile)
    for j, (x0, y0, x1, y1) in enumerate(boxes[first:first + len(tiles)]):
        canvas[y0:y1, x0:x1] = tiles[j, : y1 - y0, : x1 - x0]
