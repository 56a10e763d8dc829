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
from odp.codec import net_onnx, network, registry, tiling, workers
from odp.codec.errors import ModelNotFound
from odp.codec.engine import Engine
from odp.codec.quality import psnr
from odp.codec.training.onnx import quantize_matmuls, safetensors_offsets

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
    """Token ids -> their FSQ values, least significant first (codec/model.py's order)."""
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


def test_tokens_and_pixels_close_to_torch(nets, tiles):
    assert_close(*nets, tiles)


def test_a_tile_comes_out_the_same_whatever_its_batch(nets, tiles):
    """The 8-bit products scale their input per call: the ONNX network runs a tile per call, so that a
    tile's tokens and pixels never depend on the tiles beside it."""
    onnx_net = nets[0]
    ids = onnx_net.encode(tiles)
    assert (onnx_net.encode(tiles[2:3]) == ids[2:3]).all()
    assert (onnx_net.decode(ids[4:5, :64]) == onnx_net.decode(ids[:, :64])[4:5]).all()


def test_quantize_matmuls_on_a_small_graph():
    """Each product with an (out, in) fp16 weight becomes an 8-bit product, a weight used twice is quantized
    once, a second pass changes nothing, and the result matches numpy's per-column quantization."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from odp.codec.training.onnx import WEIGHT_LEVELS

    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 8)).astype(np.float16)  # (out, in)
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT)]
    for i in range(2):  # the same weight in two products, each with its own Transpose (as exported)
        nodes += [helper.make_node("Transpose", ["wf"], [f"wt{i}"], perm=[1, 0]),
                  helper.make_node("MatMul", ["x", f"wt{i}"], [f"y{i}"])]
    nodes.append(helper.make_node("Add", ["y0", "y1"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(w, "w")])
    proto = quantize_matmuls(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 2 and ops.count("Round") == 1 and "MatMul" not in ops
    again = quantize_matmuls(onnx.ModelProto.FromString(proto.SerializeToString()))
    assert again.SerializeToString() == proto.SerializeToString()
    x = rng.normal(size=(3, 8)).astype(np.float32)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    wf = w.astype(np.float32)
    scale = np.abs(wf).max(1) / WEIGHT_LEVELS
    wq = np.round(wf / scale[:, None]) * scale[:, None]  # the weight as the graph holds it
    assert np.abs(y - 2 * x @ wq.T).max() < 0.05 * np.abs(y).max()  # only x's 8-bit rounding left


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
            # every product with a weight matrix runs in 8 bits (a re-export without quantize_matmuls fails):
            # quantizing the graph again finds nothing left to change
            assert [n.op_type for n in proto.graph.node].count("DynamicQuantizeMatMul") >= 16
            again = quantize_matmuls(onnx.ModelProto.FromString(proto.SerializeToString()))
            assert again.SerializeToString() == proto.SerializeToString()
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
    monkeypatch.setenv("ODP_THREADS", "3")
    assert workers.threads() == 3
    assert [(b.start, b.stop) for b in workers.bands(10)] == [(0, 3), (3, 6), (6, 10)]
    for unset in ("many", "0", ""):  # not a count: one thread per core, within the cap
        monkeypatch.setenv("ODP_THREADS", unset)
        assert 1 <= workers.threads() <= workers.MAX_THREADS


def test_tiles_side_by_side_give_what_each_gives_alone(monkeypatch, refine_model, tiles):
    """The ONNX backend runs a batch's tiles on several threads at once: each tile's tokens and pixels are
    those it gets on one thread, in the batch's order."""
    net = network.open_network(refine_model.entry, "cpu", "onnx")
    cond = np.ascontiguousarray(tiles[::-1])
    monkeypatch.setenv("ODP_THREADS", "1")
    alone = net.encode(tiles, cond)
    pixels = net.decode(alone[:, :64], cond)
    monkeypatch.setenv("ODP_THREADS", "3")
    assert np.array_equal(net.encode(tiles, cond), alone)
    assert np.array_equal(net.decode(alone[:, :64], cond), pixels)


def test_refinement_stage_runs_on_both_backends(refine_model, tiles):
    """A conditioned tokenizer (the refinement stage in training) with its ONNX graphs: both backends
    take the picture so far as `cond`, and agree as the base model's do."""
    onnx_net = network.open_network(refine_model.entry, "cpu", "onnx")
    torch_net = network.open_network(refine_model.entry, "cpu", "torch")
    cond = np.ascontiguousarray(tiles[::-1])  # some other picture so far, to be refined towards `tiles`
    a = assert_close(onnx_net, torch_net, tiles, cond, counts=(1, 64, 256))
    # the tokens refine: more of them bring the picture closer to the tiles than the picture so far
    assert psnr(onnx_net.decode(a, cond), tiles) > psnr(cond, tiles) + 3


def test_sessions_open_once_ahead_of_use_and_a_broken_graph_is_not_kept(tmp_path, refine_model):
    """`warm` starts opening a graph's session in the background; the network then runs that same session.
    A graph that cannot open fails in one line each time it is asked for, and opens once it is mended."""
    import shutil

    net = network.open_network(refine_model.entry, "cpu", "onnx")
    graph = net_onnx.graph_path(refine_model.entry, "decoder")
    net.warm("decoder")
    assert net_onnx._session(graph) is net_onnx._session_future(graph).result()

    broken = tmp_path / graph.name
    broken.write_bytes(b"not a graph")
    shutil.copy(refine_model.entry.path, tmp_path / refine_model.entry.path.name)
    for _ in range(2):
        with pytest.raises(ModelNotFound, match="cannot run"):
            net_onnx._session(broken)
    shutil.copy(graph, broken)
    assert net_onnx._session(broken).get_inputs()[0].name == "ids"
