"""Export a model's network as ONNX graphs, so that encoding and decoding run without torch.

    python -m odp.codec.training.onnx --model odp-small-v2

Writes `<model>.encoder.onnx` (uint8 tiles (B, T, T, 3) -> int32 token ids (B, K)) and
`<model>.decoder.onnx` (int64 ids (B, k), any 1 <= k <= K -> uint8 tiles) next to the weights. The
graphs hold no weights: each weight is an external tensor named after its key in the model's
safetensors file, which codec/net_onnx.py reads and hands to ONNX Runtime. The safetensors file stays
the one copy of the weights (its sha256 names the model in every file), and a graph is ~100 KB.
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


class EncoderGraph(nn.Module):
    """uint8 tiles (B, T, T, 3) -> token ids (B, K) int32: the pixel convention of engine.py inside."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.permute(0, 3, 1, 2).float() / 127.5 - 1
        return self.tok.encode_values(x)[1].to(torch.int32)


class DecoderGraph(nn.Module):
    """token ids (B, k) int64 -> uint8 tiles (B, T, T, 3), as Tokenizer.decode then rounding."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = self.tok.decode_values(self.tok.fsq.ids_to_values(ids)).clamp(-1, 1)
        return torch.round((y + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)


def safetensors_offsets(path: Path) -> dict[str, tuple[str, int, int]]:
    """{key: (dtype, byte offset in the file, byte length)} of a safetensors file's tensors."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return {k: (v["dtype"], 8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in header.items() if k != "__metadata__"}


def graph(module: nn.Module, name: str, example: torch.Tensor, dynamic: dict, weights: Path) -> onnx.ModelProto:
    """The ONNX graph of `module` (one input, `name`) whose tokenizer weights are read from the model's
    safetensors file `weights` (fp16 in place, cast to fp32 when the session starts), without the
    exporter's per-node debugging text."""
    with torch.no_grad():
        proto = torch.onnx.export(module.eval(), (example,), input_names=[name], dynamic_shapes={name: dynamic},
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


def export(model: Model, out: Path) -> list[Path]:
    tok = model.tokenizer.float().eval()
    tile, tokens = model.tile, model.tokens
    batch = torch.export.Dim("batch", min=1, max=4096)
    count = torch.export.Dim("count", min=1, max=tokens)
    paths = []
    for part, module, name, example, dynamic in (
            ("encoder", EncoderGraph(tok), "tiles", torch.zeros(2, tile, tile, 3, dtype=torch.uint8), {0: batch}),
            ("decoder", DecoderGraph(tok), "ids", torch.zeros(2, tokens - 1, dtype=torch.int64), {0: batch, 1: count})):
        path = out / f"{model.name}.{part}.onnx"
        tmp = path.with_suffix(".tmp")
        onnx.save(graph(module, name, example, dynamic, model.entry.path), str(tmp))
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
