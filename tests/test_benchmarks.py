"""Speed benchmarks (pytest-benchmark). Skipped in the normal test run; measure with

    python -m pytest tests/test_benchmarks.py --benchmark-enable --benchmark-only

They time, never assert: the machines are shared and noisy. Hot paths: the whole
encode/decode of a 768x512 photo (encode includes the per-tile token allocation), the network
on one CPU batch of tiles, entropy coding and decoding, container read/write and truncation.
"""
import numpy as np
import pytest
from PIL import Image

import helpers
from odp.codec import allocation, coding, engine, imaging, network, registry, stream, tiling, weights
from odp.formats import container

PHOTO = Image.open(__import__("pathlib").Path(__file__).parent / "data" / "photo_768x512.png").convert("RGB")


@pytest.fixture(scope="module")
def model():
    return weights.load()


@pytest.fixture(scope="module")
def encoded(model):
    return helpers.encode(PHOTO, model=model, device="cpu")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_encode_768x512_cpu(benchmark, backend, monkeypatch):
    monkeypatch.setenv("ODP_BACKEND", backend)
    benchmark.pedantic(helpers.encode, args=(PHOTO,), kwargs={"device": "cpu"}, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_decode_768x512_cpu(benchmark, encoded, backend, monkeypatch):
    monkeypatch.setenv("ODP_BACKEND", backend)
    benchmark.pedantic(coding.decode, args=(encoded,), kwargs={"device": "cpu"}, rounds=5, warmup_rounds=1)


def test_entropy_code_tokens(benchmark, model):
    """All tokens of 64 tiles in the layers a new file has."""
    rng = np.random.default_rng(0)
    toks = rng.integers(0, model.config.codebook_size, (64, model.config.tokens)).astype(np.int32)
    h = container.Header(64 * 256, 256, 256, model.config.tokens, model.sha256[:container.MODEL_ID_BYTES],
                         model.best_entropy.id)
    benchmark(stream.build_layers, toks, h, stream.layer_levels(h, h.full_level), model.best_entropy)


def test_entropy_decode_768x512(benchmark, encoded):
    """Every layer of a whole file back to tokens (no network)."""
    benchmark(stream.read_tokens, encoded)


@pytest.mark.parametrize("measure", [False, True], ids=["predicted", "measured"])
def test_allocation_768x512(benchmark, measure):
    """What adaptive encoding adds: each tile's errors predicted (the default) or measured by decoding
    it at a grid of token counts, then weighed."""
    pixels = imaging.prepare(PHOTO).pixels
    eng = engine.Engine(registry.find(), "cpu", 4)
    toks = eng.encode(pixels)
    benchmark.pedantic(allocation.allocation, args=(toks, pixels, eng, eng.entry.best_entropy),
                       kwargs={"measure": measure}, rounds=3, warmup_rounds=0)


def test_truncate_768x512(benchmark, encoded):
    benchmark(stream.truncate, encoded, tokens=100)


@pytest.fixture(scope="module")
def tile_batch():
    """A batch of 4 real 256x256 tiles (the CPU batch size) of the 768x512 photo's 6."""
    return next(tiling.iter_tile_batches(np.asarray(PHOTO), 256, 4))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_network_encode_tile_batch(benchmark, tile_batch, backend):
    net = network.open_network(registry.find(), "cpu", backend)
    benchmark.pedantic(net.encode, args=(tile_batch,), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_network_decode_tile_batch(benchmark, tile_batch, backend):
    net = network.open_network(registry.find(), "cpu", backend)
    benchmark.pedantic(net.decode, args=(net.encode(tile_batch),), rounds=5, warmup_rounds=1)


def test_container_read(benchmark, encoded):
    benchmark(container.read, encoded)


def test_container_write(benchmark, encoded):
    c = container.read(encoded)
    benchmark(container.write, c)


@pytest.mark.parametrize("command", [["info"], ["info", "--verify"], ["truncate", "-o", "{cut}", "-t", "16", "-f"]],
                         ids=["info", "info-verify", "truncate"])
def test_command_startup_768x512(benchmark, encoded, tmp_path, command):
    """A whole `odp info` / `info --verify` / `truncate` process on a 768x512 file: start-up included
    (these never import torch)."""
    import subprocess
    import sys

    src = tmp_path / "a.odp"
    src.write_bytes(encoded)
    argv = [sys.executable, "-m", "odp.cli.main", command[0], str(src),
            *[a.format(cut=tmp_path / "cut.odp") for a in command[1:]]]
    benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True, "capture_output": True},
                       rounds=5, warmup_rounds=1)
