"""The tokenizer on ONNX Runtime: the default CPU backend, no torch.

The graphs (`<model>.encoder.onnx`, `<model>.decoder.onnx`, written by codec/training/onnx.py) hold no
weights: they read them as external data from the model's safetensors file beside them (fp16, cast to
fp32 once when the session starts; the products with weight matrices then run in 8 bits). The
safetensors file stays the one copy of the weights.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from .errors import ModelNotFound
from .registry import Entry
from .workers import pool, run_all


def graph_path(entry: Entry, part: str) -> Path:
    return entry.path.with_name(f"{entry.path.stem}.{part}.onnx")


def has_graphs(entry: Entry) -> bool:
    return all(graph_path(entry, part).is_file() for part in ("encoder", "decoder"))


def _new_session(graph: Path):
    """An ONNX Runtime session of `graph`, its weights read from the safetensors file beside it, one thread
    per call: tiles run side by side instead (`_run`), which scales better than splitting a tile's small
    products across threads (measured: docs/results.md, "Tiles side by side")."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a damaged or mismatched graph
        raise ModelNotFound(f"{graph.name} cannot run ({str(e).splitlines()[0][:200]}): reinstall ODP") from None


MAX_SESSIONS = 8  # sessions kept open (each holds its model's weights in fp32); the oldest closes first
_sessions: dict[tuple[Path, int], Future] = {}
_sessions_lock = threading.Lock()


def _session_future(graph: Path) -> Future:
    """The session of `graph`, made once per process on the tile pool: asking early (`OnnxNetwork.warm`)
    lets it start while the caller does other work."""
    key = (graph, os.getpid())  # a forked child makes its own
    with _sessions_lock:
        future = _sessions.pop(key, None)
        if future is None:
            if len(_sessions) >= MAX_SESSIONS:
                del _sessions[next(iter(_sessions))]  # the least recently asked for
            future = pool().submit(_new_session, graph)
        _sessions[key] = future
        return future


def _session(graph: Path):
    try:
        return _session_future(graph).result()
    except ModelNotFound:  # not kept: a graph mended later opens
        with _sessions_lock:
            _sessions.pop((graph, os.getpid()), None)
        raise


class OnnxNetwork:
    backend, device = "onnx", "cpu"

    def __init__(self, entry: Entry):
        self.entry = entry

    def _run(self, part: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One tile per call: the graphs' 8-bit products quantize their input per call, so a batch would
        make a tile's tokens and pixels depend on the tiles beside it. The calls of a batch run side by
        side on the worker threads (workers.py; ONNX Runtime lets go of the GIL), each tile's result as if alone."""
        session = _session(graph_path(self.entry, part))
        count = len(next(iter(feeds.values())))
        if any(len(v) != count for v in feeds.values()):
            raise ValueError(f"{part}: inputs of different batch sizes {[len(v) for v in feeds.values()]}")

        def one(i: int) -> np.ndarray:
            return session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]

        return np.concatenate(run_all(one, range(count)))

    def warm(self, *parts: str) -> None:
        """Start opening these graphs' sessions ("encoder", "decoder") in the background: each takes
        0.05-0.1 s, which a caller that knows what it will run overlaps with its other work."""
        for part in parts:
            _session_future(graph_path(self.entry, part))

    def _cond(self, cond: np.ndarray | None) -> dict[str, np.ndarray]:
        return {} if cond is None else {"cond": np.ascontiguousarray(cond, np.uint8)}

    def encode(self, tiles: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self._run("encoder", {"tiles": np.ascontiguousarray(tiles, np.uint8), **self._cond(cond)})

    def decode(self, ids: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self._run("decoder", {"ids": np.ascontiguousarray(ids, np.int64), **self._cond(cond)})
