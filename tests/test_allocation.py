"""The allocation predictor: each tile's errors at the token counts the allocation weighs, predicted from
its pixels and code lengths (codec/allocation.py), instead of decoding it at every count."""
from __future__ import annotations

import numpy as np
import pytest

from odp.codec import allocation, imaging, registry, tiling
from odp.codec.engine import Engine
from odp.codec.stream import token_bits
from odp.codec.training import allocfit


@pytest.fixture(scope="module")
def coded(adaptive_photo):
    pixels = imaging.prepare(adaptive_photo).pixels
    engine = Engine(registry.find(), "cpu")
    return pixels, engine, engine.encode(pixels)


def test_the_default_model_ships_a_predictor():
    entry = registry.find()
    assert allocation.fits(entry.allocation, entry.tokens)
    assert all("." not in p.stem for p in registry.installed())  # the predictor's file is not a model


def test_allocation_decodes_nothing_by_default(coded, monkeypatch):
    pixels, engine, toks = coded

    def no_decoding(*args, **kw):
        raise AssertionError("the allocation decoded tiles")

    monkeypatch.setattr(engine, "tile_errors", no_decoding)
    weights, caps = allocation.allocation(toks, pixels, engine, engine.entry.best_entropy)
    assert len(weights) == len(caps) == 6 and min(weights) < 255 == max(weights)
    with pytest.raises(AssertionError, match="decoded"):
        allocation.allocation(toks, pixels, engine, engine.entry.best_entropy, measure=True)


def test_predicted_errors_are_near_the_measured_ones(coded):
    """On a real photo, each tile's predicted squared error is within a factor of 2 of the decoder's
    at every weighed count, and ranks the tiles as the decoder does at 16 tokens."""
    pixels, engine, toks = coded
    bits = token_bits(toks, engine.entry.best_entropy)
    predicted = allocation.predicted_errors(engine.entry.allocation, pixels, engine.tile, bits)
    counts = np.array(allocation.PREDICTED_COUNTS)
    for j in (1, 3, 6):
        measured = engine.tile_errors(toks, pixels, np.arange(len(toks)), int(counts[j]))
        ratio = predicted[:, j] / measured
        assert (ratio > 0.5).all() and (ratio < 2).all(), (counts[j], ratio)
        if j == 1:
            assert np.corrcoef(np.log(predicted[:, j]), np.log(measured))[0, 1] > 0.7


def test_features_cover_partial_tiles(coded):
    """Edge tiles are measured over their pixels inside the image only, not their reflected padding."""
    pixels, engine, toks = coded
    crop = pixels[:300, :300]
    n = np.prod(tiling.grid(300, 300, 256))
    x = allocation.tile_features(crop, 256, np.full((n, 256), 9.0), allocation.PREDICTED_COUNTS)
    assert x.shape == (4, len(allocation.PREDICTED_COUNTS), allocation.FEATURES) and np.isfinite(x).all()


def test_fit_reports_and_recovers_a_known_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(allocation.PREDICTED_COUNTS), allocation.FEATURES))
    mse = np.exp(0.5 * x[..., 0] - 0.3 * x[..., 2] + 3)
    coef, report = allocfit.fit({"features": x, "mse": mse, "counts": np.array(allocation.PREDICTED_COUNTS)})
    assert coef.shape == (len(allocation.PREDICTED_COUNTS), allocation.DESIGN_WIDTH)
    assert max(report["rms_log_error"]) < 0.1 and report["checked"] == 80


def test_caps_fall_where_training_tiles_end():
    """Predicted caps are only counts where at least 5% of training tiles have their least error."""
    counts = np.array(allocation.PREDICTED_COUNTS)
    mse = np.tile(np.linspace(2, 1, len(counts)), (100, 1))
    mse[:90, -2] = 0.5     # 90 tiles end best at 224, 10 at 256
    assert allocfit.cap_counts(mse).tolist() == [224, 256]
    mse[:, :] = np.linspace(1, 2, len(counts))  # every tile best at 4 tokens: caps stay in the tail
    assert allocfit.cap_counts(mse).tolist() == [256]
    assert set(registry.find().allocation["cap_counts"]) <= set(counts[counts >= allocation.PREDICTED_CAP_FLOOR])


def test_work_split_across_threads_gives_the_same_values(adaptive_photo, monkeypatch):
    """The encoder's array work runs in parts on the worker threads (workers.py): the enlarged picture and
    the tiles' features are the same, value for value, on one thread and on three (an odd edge tile too)."""
    pixels = np.asarray(adaptive_photo)[:300, :500]
    bits = np.random.default_rng(0).uniform(2, 12, (len(tiling.tile_boxes(500, 300, 256)), 256))
    results = []
    for n in ("1", "3"):
        monkeypatch.setenv("ODP_THREADS", n)
        results.append((imaging.enlarge_bicubic(pixels, 2), allocation.tile_features(pixels, 256, bits, [1, 64, 256])))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])
