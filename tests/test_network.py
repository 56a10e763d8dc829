"""The two backends of the network (codec/network.py): ONNX Runtime, the CPU default, and torch.

Both run the same weights. The ONNX graphs multiply by the weight matrices in 8 bits
(codec/training/onnx.py `quantize_matmuls`), torch in floats: a token's FSQ values then differ by at most
one level where they differ (a few in a hundred), decoded tiles by a few levels (over 50 dB between
them, the same PSNR to the source within 0.01 dB), and files from either decode on the other.
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


def fsq_values(ids: np.ndarray, levels: list[int]) -> np.ndarray:
    """Token ids -> their FSQ values, one per level (mixed radix, either digit order)."""
    values = []
    for n in levels:
        values.append(ids % n)
        ids = ids // n
    return np.stack(values, -1)


def assert_close(onnx_net, torch_net, tiles, cond=None, counts=(1, 16, 200, 256)):
    """The 8-bit graphs against torch's floats, as the module docstring says."""
    levels = onnx_net.entry.config["levels"]
    a, b = onnx_net.encode(tiles, cond), torch_net.encode(tiles, cond)
    assert a.dtype == b.dtype == np.int32 and a.shape == b.shape == (len(tiles), 256)
    va, vb = fsq_values(a, levels), fsq_values(b, levels)
    assert np.abs(va - vb).max() <= 1 and (va == vb).mean() > 0.97
    for k in counts:
        x, y = onnx_net.decode(a[:, :k], cond), torch_net.decode(a[:, :k], cond)
        assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape == (len(tiles), 256, 256, 3)
        assert psnr(x, y) > 50
        assert abs(psnr(x, tiles) - psnr(y, tiles)) < 0.01
    return a


def test_same_tokens_and_pixels(nets, tiles):
    assert_close(*nets, tiles)


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
            # every product with a weight matrix runs in 8 bits (a re-export without quantize_matmuls fails)
            ops = [n.op_type for n in proto.graph.node]
            assert ops.count("DynamicQuantizeMatMul") >= 16 and ops.count("Round") >= 16
            made_by = {o: n for n in proto.graph.node for o in n.output}
            float_products = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in made_by
                              and made_by[n.input[1]].op_type == "Transpose"
                              and made_by.get(made_by[n.input[1]].input[0], n).op_type == "Cast"]
            assert float_products == []
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
    a = assert_close(onnx_net, torch_net, tiles, cond, counts=(1, 64, 256))
    # the tokens refine: more of them bring the picture closer to the tiles than the picture so far
    assert psnr(onnx_net.decode(a, cond), tiles) > psnr(cond, tiles) + 3
