"""The tokenizer on ONNX Runtime: the default CPU backend, no torch.

The graphs (`<model>.encoder.onnx`, `<model>.decoder.onnx`, written by codec/training/onnx.py) hold no
weights: they read them as external data from the model's safetensors file beside them (fp16, cast to
fp32 once when the session starts; the products with weight matrices then run in 8 bits). The
safetensors file stays the one copy of the weights.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ModelNotFound
from .registry import Entry


def graph_path(entry: Entry, part: str) -> Path:
    return entry.path.with_name(f"{entry.path.stem}.{part}.onnx")


def has_graphs(entry: Entry) -> bool:
    return all(graph_path(entry, part).is_file() for part in ("encoder", "decoder"))


def threads() -> int:
    """Threads per network call: $ODP_THREADS, else 0 (ONNX Runtime's default: one per physical core)."""
    value = os.environ.get("ODP_THREADS", "0")
    return int(value) if value.isdigit() else 0


@lru_cache(maxsize=8)
def _session(graph: Path):
    """An ONNX Runtime session of `graph`, its weights read from the safetensors file beside it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads()
    try:
        return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a damaged or mismatched graph
        raise ModelNotFound(f"{graph.name} cannot run ({str(e).splitlines()[0][:200]}): reinstall ODP") from None


class OnnxNetwork:
    backend, device = "onnx", "cpu"

    def __init__(self, entry: Entry):
        self.entry = entry

    def _run(self, part: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One tile per call: the graphs' 8-bit products quantize their input per call, so a batch would
        make a tile's tokens and pixels depend on the tiles beside it (and one at a time is no slower)."""
        session = _session(graph_path(self.entry, part))
        count = len(next(iter(feeds.values())))
        if any(len(v) != count for v in feeds.values()):
            raise ValueError(f"{part}: inputs of different batch sizes {[len(v) for v in feeds.values()]}")
        return np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                               for i in range(count)])

    def _cond(self, cond: np.ndarray | None) -> dict[str, np.ndarray]:
        return {} if cond is None else {"cond": np.ascontiguousarray(cond, np.uint8)}

    def encode(self, tiles: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self._run("encoder", {"tiles": np.ascontiguousarray(tiles, np.uint8), **self._cond(cond)})

    def decode(self, ids: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self._run("decoder", {"ids": np.ascontiguousarray(ids, np.int64), **self._cond(cond)})
