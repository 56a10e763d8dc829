"""Speed benchmarks (pytest-benchmark). Skipped in the normal test run; measure with

    python -m pytest tests/test_benchmarks.py --benchmark-enable --benchmark-only

They time, never assert: the machines are shared and noisy.
"""
import numpy as np
import pytest
from PIL import Image

from odp.codec import pipeline, weights
from odp.entropy import coder

PHOTO = Image.open(__import__("pathlib").Path(__file__).parent / "data" / "photo_768x512.png").convert("RGB")


@pytest.fixture(scope="module")
def model():
    return weights.load()


@pytest.fixture(scope="module")
def encoded(model):
    return pipeline.encode(PHOTO, model=model, device="cpu")


def test_encode_768x512_cpu(benchmark, model):
    benchmark.pedantic(pipeline.encode, args=(PHOTO,), kwargs={"model": model, "device": "cpu"},
                       rounds=5, warmup_rounds=1)


def test_decode_768x512_cpu(benchmark, encoded):
    benchmark.pedantic(pipeline.decode, args=(encoded,), kwargs={"device": "cpu"}, rounds=5, warmup_rounds=1)


def test_entropy_code_tokens(benchmark, model):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, model.config.codebook_size, (64, model.config.tokens)).astype(np.int32)
    benchmark(coder.encode_tokens, toks, pipeline.CHUNK_TOKENS, model.tables)


def test_truncate_768x512(benchmark, encoded):
    benchmark(pipeline.truncate, encoded, tokens=100)
