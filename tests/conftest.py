"""Shared fixtures: the shipped model, the two small test photos and their encodings.

Everything expensive (model load, neural encodes) is session-scoped and computed once.
The network always runs on the CPU here so that results do not depend on the machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers
from odp.codec import weights

DATA = Path(__file__).parent / "data"
PHOTOS = {"astronaut": "astronaut-320x240.png", "coffee": "coffee-200x150.png"}


@pytest.fixture(scope="session")
def model() -> weights.Model:
    return weights.load()


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    out = {}
    for name, fn in PHOTOS.items():
        with Image.open(DATA / fn) as im:
            out[name] = im.convert("RGB")
    return out


@pytest.fixture(scope="session")
def astronaut(photos) -> Image.Image:
    """320x240: 2 tiles of 256."""
    return photos["astronaut"]


@pytest.fixture(scope="session")
def coffee(photos) -> Image.Image:
    """200x150: 1 tile."""
    return photos["coffee"]


@pytest.fixture(scope="session")
def v1_model():
    """The first shipped model, kept installed so that the files written with it still decode."""
    return weights.load("odp-small-v1")


@pytest.fixture(scope="session")
def encoded(photos, model) -> dict[str, bytes]:
    """Full-length (all K tokens) encodings of the test photos, every tile alike (adaptive=False), so that
    tokens per tile are exact; adaptive files have their own fixture and tests."""
    return {name: helpers.encode(im, model=model, device="cpu", adaptive=False) for name, im in photos.items()}


@pytest.fixture(scope="session")
def adaptive_photo(photos) -> Image.Image:
    """A real photo of 6 tiles whose tiles differ in need (sky, face, detail)."""
    return Image.open(DATA / "photo_768x512.png").convert("RGB")


@pytest.fixture(scope="session")
def adaptive_odp(adaptive_photo, model) -> bytes:
    return helpers.encode(adaptive_photo, model=model, device="cpu")


@pytest.fixture(scope="session")
def small_photo(coffee) -> Image.Image:
    """A 64x48 crop of a real photo: one tile, cheap to encode and decode."""
    return coffee.crop((60, 40, 124, 88))


@pytest.fixture(scope="session")
def small_odp(small_photo, model) -> bytes:
    return helpers.encode(small_photo, model=model, device="cpu")


@pytest.fixture(scope="session")
def small_staged(small_photo, model) -> bytes:
    """What `odp encode` makes by default of small_photo: the first stage, then the refinement stage."""
    return helpers.encode(small_photo, model=model, device="cpu", refine=True)


@pytest.fixture(scope="session")
def big_photo(photos) -> Image.Image:
    """4000x3000 real-photo content: the two test photos upscaled and mirrored into a 2x2 mosaic."""
    a, c = photos["astronaut"], photos["coffee"]
    big = Image.new("RGB", (4000, 3000))
    big.paste(a.resize((2000, 1500), Image.BICUBIC), (0, 0))
    big.paste(c.resize((2000, 1500), Image.BICUBIC), (2000, 0))
    big.paste(c.resize((2000, 1500), Image.BICUBIC).transpose(Image.FLIP_TOP_BOTTOM), (0, 1500))
    big.paste(a.resize((2000, 1500), Image.BICUBIC).transpose(Image.FLIP_LEFT_RIGHT), (2000, 1500))
    return big


@pytest.fixture(scope="session")
def refine_model() -> weights.Model:
    """The shipped refinement stage of the default model's files."""
    from odp.codec import registry

    return weights.for_entry(registry.refinement_for(registry.find()))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (minutes on a CPU)")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow are skipped unless --runslow is given or -m selects them."""
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
