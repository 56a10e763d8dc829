"""The two backends of the network (codec/network.py): ONNX Runtime, the CPU default, and torch.

Both run the same weights: the same tokens except where a value sits on an FSQ rounding edge, decoded
pixels within one level before deblocking, and files from either decode on the other.
"""
from __future__ import annotations

import numpy as np
import pytest

import odp
from odp.codec import net_onnx, network, registry, tiling
from odp.codec.engine import Engine
from odp.codec.quality import psnr
from odp.codec.training.onnx import safetensors_offsets

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiles(adaptive_photo) -> np.ndarray:
    return next(tiling.iter_tile_batches(np.asarray(adaptive_photo), 256, 6))


@pytest.fixture(scope="module")
def nets():
    entry = registry.find()
    return network.open_network(entry, "cpu", "onnx"), network.open_network(entry, "cpu", "torch")


def test_auto_is_onnx_on_a_cpu(monkeypatch):
    monkeypatch.delenv("ODP_BACKEND", raising=False)
    assert Engine(registry.find(), "cpu").backend == "onnx"
    monkeypatch.setenv("ODP_BACKEND", "torch")
    assert Engine(registry.find(), "cpu").backend == "torch"


def test_a_torch_network_in_hand_runs_on_torch(model):
    assert Engine(model, "cpu").backend == "torch"


def test_same_tokens_and_pixels(nets, tiles):
    onnx_net, torch_net = nets
    a, b = onnx_net.encode(tiles), torch_net.encode(tiles)
    assert a.dtype == b.dtype == np.int32 and a.shape == b.shape == (6, 256)
    assert (a == b).mean() > 0.999  # only values on a rounding edge may differ
    for k in (1, 16, 200, 256):
        x, y = onnx_net.decode(a[:, :k]), torch_net.decode(a[:, :k])
        assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape == (6, 256, 256, 3)
        assert np.abs(x.astype(int) - y).max() <= 1


def test_files_cross_backends(adaptive_photo, monkeypatch):
    """Encoded on one backend, decoded on either: valid files, the same picture within 0.01 dB."""
    src = np.asarray(adaptive_photo)
    quality = {}
    for enc in ("onnx", "torch"):
        monkeypatch.setenv("ODP_BACKEND", enc)
        data = odp.encode(adaptive_photo, bytes=900)
        for dec in ("onnx", "torch"):
            monkeypatch.setenv("ODP_BACKEND", dec)
            quality[enc, dec] = psnr(np.asarray(odp.decode(data)), src)
    assert max(quality.values()) - min(quality.values()) < 0.01, quality


def test_graphs_read_their_weights_file():
    """Every weight a shipped graph reads is the tensor of that name in the safetensors file beside it,
    at its offset: a model retrained without re-exporting its graphs fails here."""
    onnx = pytest.importorskip("onnx")
    for path in registry.installed():
        entry = registry.entry_at(path)
        assert net_onnx.has_graphs(entry), f"{path.stem} has no ONNX graphs: python -m odp.codec.training.onnx"
        offsets = safetensors_offsets(path)
        for part in ("encoder", "decoder"):
            proto = onnx.load(str(net_onnx.graph_path(entry, part)), load_external_data=False)
            external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
            assert len(external) > 10
            for t in external:
                where = {e.key: e.value for e in t.external_data}
                assert where["location"] == path.name
                assert (int(where["offset"]), int(where["length"])) == offsets[t.name][1:], t.name


def test_backend_and_device_errors(monkeypatch):
    entry = registry.find()
    with pytest.raises(ValueError, match="unknown backend"):
        network.open_network(entry, "cpu", "tensorrt")
    monkeypatch.setenv("ODP_BACKEND", "fast")
    with pytest.raises(ValueError, match="unknown backend"):
        network.open_network(entry, "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        network.pick_device("tpu")


def test_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("ODP_THREADS", "1")
    assert net_onnx.threads() == 1
    monkeypatch.setenv("ODP_THREADS", "many")
    assert net_onnx.threads() == 0


def test_refinement_stage_runs_on_both_backends(refine_model, tiles):
    """A conditioned tokenizer (the refinement stage in training) with its ONNX graphs: both backends
    take the picture so far as `cond`, and agree as the base model's do."""
    onnx_net = network.open_network(refine_model.entry, "cpu", "onnx")
    torch_net = network.open_network(refine_model.entry, "cpu", "torch")
    cond = np.ascontiguousarray(tiles[::-1])  # some other picture so far, to be refined towards `tiles`
    a, b = onnx_net.encode(tiles, cond), torch_net.encode(tiles, cond)
    assert a.shape == b.shape == (6, 256) and (a == b).mean() > 0.999
    for k in (1, 64, 256):
        x, y = onnx_net.decode(a[:, :k], cond), torch_net.decode(a[:, :k], cond)
        assert x.shape == (6, 256, 256, 3) and np.abs(x.astype(int) - y).max() <= 1
    # the tokens refine: more of them bring the picture closer to the tiles than the picture so far
    assert psnr(onnx_net.decode(a, cond), tiles) > psnr(cond, tiles) + 3
