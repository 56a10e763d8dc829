"""Export a model's network as ONNX graphs, so that encoding and decoding run without torch.

    python -m odp.codec.training.onnx --model odp-small-v2

Writes `<model>.encoder.onnx` (uint8 tiles (B, T, T, 3) -> int32 token ids (B, K)) and
`<model>.decoder.onnx` (int64 ids (B, k), any 1 <= k <= K -> uint8 tiles) next to the weights; a
refinement stage's graphs (a conditioned tokenizer) take a second input, `cond`: uint8 tiles of the
picture so far, the same shape as the tiles (the decoder's as its output's, smaller for a model with
`out_shrink`). The graphs hold no weights: each weight is an external tensor named after its key in the model's
safetensors file, which codec/net_onnx.py reads and hands to ONNX Runtime. The safetensors file stays
the one copy of the weights (its sha256 names the model in every file), and a graph is ~100 KB.

The products with a weight matrix run in 8-bit integers (`quantize_matmuls`): on a CPU encoding about
1.4x and decoding 1.1x faster, at the same rate-distortion (docs/results.md, "8-bit products").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
import torch
from torch import nn

from ..registry import WEIGHTS_DIR
from ..weights import Model, load

WEIGHT_PREFIX = "model."  # the safetensors key of tokenizer weight `k` is WEIGHT_PREFIX + k


def _unit(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, T, 3) -> float (B, 3, T, T) in [-1, 1]: the pixel convention of engine.py."""
    return tiles.permute(0, 3, 1, 2).float() / 127.5 - 1


def _pixels(y: torch.Tensor) -> torch.Tensor:
    return torch.round((y.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)


class EncoderGraph(nn.Module):
    """uint8 tiles (B, T, T, 3) -> token ids (B, K) int32."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.tok.encode_values(_unit(tiles))[1].to(torch.int32)


class DecoderGraph(nn.Module):
    """token ids (B, k) int64 -> uint8 tiles (B, T, T, 3), as Tokenizer.decode then rounding."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _pixels(self.tok.decode_values(self.tok.fsq.ids_to_values(ids)))


class CondEncoderGraph(EncoderGraph):
    """A refinement stage's encoder: tiles and the picture so far (uint8, same shape) -> ids."""

    def forward(self, tiles: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.tok.encode_values(_unit(tiles), _unit(cond))[1].to(torch.int32)


class CondDecoderGraph(DecoderGraph):
    """A refinement stage's decoder: ids and the picture so far -> that picture plus what they add."""

    def forward(self, ids: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return _pixels(self.tok.decode_values(self.tok.fsq.ids_to_values(ids), cond=_unit(cond)))


def safetensors_offsets(path: Path) -> dict[str, tuple[str, int, int]]:
    """{key: (dtype, byte offset in the file, byte length)} of a safetensors file's tensors."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return {k: (v["dtype"], 8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items() if k != "__metadata__"}


def graph(module: nn.Module, inputs: dict[str, tuple[torch.Tensor, dict]], weights: Path) -> onnx.ModelProto:
    """The ONNX graph of `module` (inputs: name -> (example, dynamic dims)) whose tokenizer weights are read from the model's
    safetensors file `weights` (fp16 in place, cast to fp32 when the session starts), without the
    exporter's per-node debugging text."""
    with torch.no_grad():
        proto = torch.onnx.export(module.eval(), tuple(x for x, _ in inputs.values()), input_names=list(inputs),
                                  dynamic_shapes={name: dims for name, (_, dims) in inputs.items()},
                                  dynamo=True, optimize=False, external_data=False).model_proto
    offsets = safetensors_offsets(weights)
    casts = []
    for init in proto.graph.initializer:
        key = WEIGHT_PREFIX + init.name.removeprefix("tok.")
        if key not in offsets:
            continue
        dtype, offset, length = offsets[key]
        if dtype != "F16":
            raise ValueError(f"{weights.name}: {key} is {dtype}, expected F16")
        casts.append(onnx.helper.make_node("Cast", [key], [init.name], to=onnx.TensorProto.FLOAT))
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_type = onnx.TensorProto.FLOAT16
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", weights.name), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
        init.name = key
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


WEIGHT_LEVELS = 63  # weights in -63..63: 7 bits, so no CPU's u8 x s8 pairwise sums (AVX2's) saturate


def quantize_matmuls(proto: onnx.ModelProto, levels: int = WEIGHT_LEVELS) -> onnx.ModelProto:
    """Each product with a weight matrix, MatMul(x, Transpose(Cast(w))) of an fp16 weight in the
    safetensors file, becomes ONNX Runtime's DynamicQuantizeMatMul: x quantized to 8 bits per call, the
    weight per output column, symmetric with `levels` steps each side. The weight's quantization is part
    of the graph (Abs, ReduceMax, Div, Round, Cast), folded into a constant when the session starts, so the
    safetensors file stays the one copy of the weights. Products of two activations (attention) stay
    float."""
    helper, g = onnx.helper, proto.graph
    assert any(o.domain in ("", "ai.onnx") and o.version >= 18 for o in proto.opset_import)  # ReduceMax's axes input
    made_by = {name: node for node in g.node for name in node.output}
    weights = {init.name: init for init in g.initializer}
    if "q.axis" not in weights:  # already quantized: nothing is left to match, and these are there
        g.initializer.extend([helper.make_tensor("q.axis", onnx.TensorProto.INT64, [1], [0]),
                              helper.make_tensor("q.tiny", onnx.TensorProto.FLOAT, [], [1e-12]),
                              helper.make_tensor("q.levels", onnx.TensorProto.FLOAT, [], [float(levels)])])
    nodes, done = [], set()
    for node in g.node:
        t = made_by.get(node.input[1]) if node.op_type == "MatMul" else None
        cast = made_by.get(t.input[0]) if t is not None and t.op_type == "Transpose" else None
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None) if t is not None else None
        if (cast is None or cast.op_type != "Cast" or cast.input[0] not in weights
                or len(weights[cast.input[0]].dims) != 2 or perm != [1, 0]):  # only (out, in) matrices
            nodes.append(node)
            continue
        w, key = node.input[1], cast.input[0]  # w: the float (in, out) matrix; key: its fp16 (out, in) weight
        if key not in done:  # a weight used twice is quantized once
            done.add(key)
            columns = weights[key].dims[0]
            g.initializer.append(helper.make_tensor(f"{key}.zero", onnx.TensorProto.INT8, [columns],
                                                    bytes(columns), raw=True))
            nodes += [helper.make_node("Abs", [w], [f"{key}.abs"]),
                      helper.make_node("ReduceMax", [f"{key}.abs", "q.axis"], [f"{key}.max"], keepdims=0),
                      helper.make_node("Max", [f"{key}.max", "q.tiny"], [f"{key}.top"]),
                      helper.make_node("Div", [f"{key}.top", "q.levels"], [f"{key}.scale"]),
                      # QuantizeLinear's arithmetic (round half to even), which ONNX Runtime folds 2x faster
                      helper.make_node("Div", [w, f"{key}.scale"], [f"{key}.steps"]),
                      helper.make_node("Round", [f"{key}.steps"], [f"{key}.rounded"]),
                      helper.make_node("Cast", [f"{key}.rounded"], [f"{key}.int8"], to=onnx.TensorProto.INT8)]
        nodes += [helper.make_node("DynamicQuantizeMatMul", [node.input[0], f"{key}.int8", f"{key}.scale",
                                                             f"{key}.zero"], list(node.output), domain="com.microsoft")]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto


def export(model: Model, out: Path) -> list[Path]:
    tok = model.tokenizer.float().eval()
    tile, tokens = model.tile, model.tokens
    batch = torch.export.Dim("batch", min=1, max=4096)
    count = torch.export.Dim("count", min=1, max=tokens)
    tiles = torch.zeros(2, tile, tile, 3, dtype=torch.uint8)
    ids = torch.zeros(2, tokens - 1, dtype=torch.int64)
    # separate example tensors: the exporter would take one tensor passed twice for one input
    cond = {"cond": (torch.zeros_like(tiles), {0: batch})} if tok.cfg.conditioned else {}
    drawn = tok.cfg.out_tile  # a decoder drawing smaller (out_shrink) is given the picture so far at its size
    out_cond = {"cond": (torch.zeros(2, drawn, drawn, 3, dtype=torch.uint8), {0: batch})} if tok.cfg.conditioned else {}
    enc, dec = (CondEncoderGraph, CondDecoderGraph) if tok.cfg.conditioned else (EncoderGraph, DecoderGraph)
    paths = []
    for part, module, inputs in (("encoder", enc(tok), {"tiles": (tiles, {0: batch}), **cond}),
                                 ("decoder", dec(tok), {"ids": (ids, {0: batch, 1: count}), **out_cond})):
        path = out / f"{model.name}.{part}.onnx"
        tmp = path.with_suffix(".tmp")
        onnx.save(quantize_matmuls(graph(module, inputs, model.entry.path)), str(tmp))
        tmp.replace(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="odp-small-v2")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    for path in export(load(args.model), args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
