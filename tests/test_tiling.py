"""Splitting images into reflect-padded tiles and putting them back (no neural network)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odp.codec import coding, imaging, tiling


@pytest.mark.parametrize("w, h, tile, expected", [
    (1, 1, 256, (1, 1)), (256, 256, 256, (1, 1)), (257, 256, 256, (2, 1)),
    (17, 300, 256, (1, 2)), (3000, 5, 256, (12, 1)), (4000, 3000, 256, (16, 12)),
])
def test_grid(w, h, tile, expected):
    assert tiling.grid(w, h, tile) == expected


def coverage(w: int, h: int, tile: int) -> np.ndarray:
    count = np.zeros((h, w), np.int32)
    for x0, y0, x1, y1 in tiling.tile_boxes(w, h, tile):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 <= tile and y1 - y0 <= tile
        assert x0 % tile == 0 and y0 % tile == 0
        count[y0:y1, x0:x1] += 1
    return count


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.sampled_from([16, 37, 64, 256]))
def test_tile_boxes_cover_the_image_exactly_once(w, h, tile):
    assert (coverage(w, h, tile) == 1).all()
    boxes = tiling.tile_boxes(w, h, tile)
    cols, rows = tiling.grid(w, h, tile)
    assert len(boxes) == cols * rows
    assert boxes == sorted(boxes, key=lambda b: (b[1], b[0]))  # row-major


def test_tile_boxes_large_and_thin():
    for w, h in ((4000, 3000), (3000, 5), (5, 3000), (1, 1)):
        assert (coverage(w, h, 256) == 1).all()


def batches(image: np.ndarray, tile: int, batch: int) -> np.ndarray:
    out = list(tiling.iter_tile_batches(image, tile, batch))
    assert all(1 <= len(b) <= batch for b in out)
    assert all(len(b) == batch for b in out[:-1])
    assert all(b.dtype == np.uint8 and b.shape[1:] == (tile, tile, 3) for b in out)
    return np.concatenate(out)


def test_iter_tile_batches_reflect_padding(rng):
    img = rng.integers(0, 256, (17, 300, 3), dtype=np.uint8)  # 2 tiles of 256: 256x17 and 44x17
    tiles = batches(img, 256, 4)
    assert tiles.shape == (2, 256, 256, 3)
    np.testing.assert_array_equal(tiles[0, :17, :256], img[:, :256])
    np.testing.assert_array_equal(tiles[1, :17, :44], img[:, 256:])
    # reflection without repeating the edge: row 17 mirrors row 15, column 44 of tile 1 mirrors 42
    np.testing.assert_array_equal(tiles[0, 17], img[15, :256])
    np.testing.assert_array_equal(tiles[0, 18], img[14, :256])
    np.testing.assert_array_equal(tiles[1, :17, 44], img[:, 256 + 42])
    np.testing.assert_array_equal(tiles[1, :17, 45], img[:, 256 + 41])
    for t, (x0, y0, x1, y1) in zip(tiles, tiling.tile_boxes(300, 17, 256)):
        crop = img[y0:y1, x0:x1]
        expected = np.pad(crop, ((0, 256 - crop.shape[0]), (0, 256 - crop.shape[1]), (0, 0)), mode="reflect")
        np.testing.assert_array_equal(t, expected)
    # pure reflection: no value appears in the padding that is not in the tile
    assert set(np.unique(tiles[1])) <= set(np.unique(img[:, 256:]))


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (5, 1), (2, 2), (3, 40)])
def test_iter_tile_batches_tiny_images(h, w, rng):
    """Sides far smaller than the padding (down to 1 pixel) still give whole, reflected tiles."""
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tiles = batches(img, 16, 3)
    cols, rows = tiling.grid(w, h, 16)
    assert len(tiles) == cols * rows
    np.testing.assert_array_equal(tiles[0, :h, :w], img[:16, :16])
    if h == 1:  # a 1-pixel side can only repeat
        assert (tiles[0] == tiles[0, :1]).all()
    assert set(map(tuple, tiles[0].reshape(-1, 3))) <= set(map(tuple, img.reshape(-1, 3)))


@pytest.mark.parametrize("batch", [1, 3, 4, 100])
def test_batch_size_does_not_change_tiles(batch, rng):
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(batches(img, 32, batch), batches(img, 32, 7))


def test_place_tiles_crops_edge_tiles():
    w, h, tile = 300, 17, 256
    canvas = np.zeros((h, w, 3), np.uint8)
    tiles = np.stack([np.full((tile, tile, 3), v, np.uint8) for v in (10, 20)])
    tiles[1, 17:] = 99   # padding rows and columns must be dropped
    tiles[1, :, 44:] = 99
    tiling.place_tiles(canvas, tiles[1:], 1, tile)   # out of order, by index
    tiling.place_tiles(canvas, tiles[:1], 0, tile)
    assert (canvas[:, :256] == 10).all()
    assert (canvas[:, 256:] == 20).all()


def test_place_tiles_ignores_tiles_past_the_end():
    canvas = np.zeros((10, 10, 3), np.uint8)
    tiling.place_tiles(canvas, np.full((3, 16, 16, 3), 7, np.uint8), 0, 16)
    assert (canvas == 7).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.sampled_from([16, 32]), st.integers(1, 5), st.integers(0, 2**31))
def test_split_then_place_is_identity(w, h, tile, batch, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    canvas = np.zeros_like(img)
    first = 0
    for b in tiling.iter_tile_batches(img, tile, batch):
        tiling.place_tiles(canvas, b, first, tile)
        first += len(b)
    np.testing.assert_array_equal(canvas, img)


def test_split_then_place_a_4000x3000_photo(big_photo):
    """The mosaic of real photos goes through prepare and tiling unchanged (the network is not run)."""
    p = imaging.prepare(big_photo)
    assert p.pixels.shape == (3000, 4000, 3)
    canvas = np.zeros_like(p.pixels)
    first = 0
    n = 0
    for b in tiling.iter_tile_batches(p.pixels, 256, 16):
        tiling.place_tiles(canvas, b, first, 256)
        first += len(b)
        n += 1
    assert first == 16 * 12 and n == 12
    np.testing.assert_array_equal(canvas, p.pixels)


def test_deblock_removes_a_jump_between_flat_tiles():
    img = np.zeros((64, 512, 3), np.uint8)
    img[:, :256], img[:, 256:] = 100, 140
    tiling.deblock(img, 256)
    steps = np.abs(np.diff(img[0, :, 0].astype(int)))
    assert steps.max() <= 3  # the 40-level jump is spread into a ramp
    assert img[0, 0, 0] == 100 and img[0, -1, 0] == 140  # far from the border nothing moves
    assert img[0, 255, 0] < img[0, 256, 0]


def test_deblock_keeps_a_smooth_gradient():
    ramp = np.tile(np.linspace(0, 255, 600).round().astype(np.uint8)[None, :, None], (600, 1, 3))
    out = ramp.copy()
    tiling.deblock(out, 256)
    assert np.abs(out.astype(int) - ramp).max() <= 1


@pytest.mark.parametrize("w, h", [(256, 256), (200, 100), (260, 256)])
def test_deblock_leaves_single_tiles_and_slivers_alone(w, h, rng):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = img.copy()
    tiling.deblock(out, 256)
    assert np.array_equal(out, img)


def test_decoded_photo_has_no_visible_tile_seams(encoded):
    """The tile-seam target of the model card: border/inside gradient ratio below 1.2 at 256
    tokens (about 13 without the deblocking filter); at 16 tokens tiles disagree more in colour."""
    from odp.codec.evaluation.metrics import seam_ratio

    assert seam_ratio(np.asarray(coding.decode(encoded["astronaut"]))) < 1.2
    assert seam_ratio(np.asarray(coding.decode(encoded["astronaut"], tokens=16))) < 2.5


@pytest.mark.parametrize("scale", [2, 3])
def test_enlarge_bicubic_is_torch_bicubic(scale, adaptive_photo):
    """A refinement stage sees the picture so far enlarged as in training (torch's bicubic, half-pixel
    centres): the torch-free enlargement gives the same pixels within one level, edges included."""
    import torch
    import torch.nn.functional as F

    pixels = np.asarray(adaptive_photo)[100:260, 300:501]  # odd width: edge handling on both sides
    ours = imaging.enlarge_bicubic(pixels, scale)
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    ref = ((y[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert ours.shape == ref.shape == (160 * scale, 201 * scale, 3)
    diff = np.abs(ours.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2  # float rounding at .5 only
