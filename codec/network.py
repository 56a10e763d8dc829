"""The network behind an Engine: which backend runs the tokenizer, and on which device.

Two backends run the same weights (the model's safetensors file): ONNX Runtime (net_onnx.py), the
default on a CPU, which starts in a fraction of a second and needs no torch; and torch (net_torch.py),
the CUDA path, the training framework, and the fallback where a model has no ONNX graphs. The ONNX
graphs multiply by the weights in 8 bits: about 4% of the tokens differ from torch's (each FSQ value by
one level at most) and pixels by a few levels, at the same rate-distortion; files from either decode
on the other. `ODP_BACKEND` (auto, onnx or torch) overrides the choice.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Protocol

import numpy as np

from .errors import ModelNotFound
from .options import DEVICES

BACKENDS = ("auto", "onnx", "torch")


class Network(Protocol):
    backend: str    # "onnx" or "torch"
    device: str     # "cpu" or "cuda"

    def encode(self, tiles: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        """uint8 tiles (B, T, T, 3) -> token ids (B, K) int32. `cond`: a refinement stage's picture so
        far, uint8 tiles of the same shape (only for a conditioned model, which needs it)."""

    def decode(self, ids: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        """token ids (B, k), 1 <= k <= K -> uint8 tiles (B, T, T, 3) (`cond` as for encode)."""


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _nvidia_present() -> bool:
    """A cheap look for an NVIDIA driver, so that "auto" imports torch only where CUDA may be."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def pick_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device '{device}' (use auto, cpu or cuda)")
    if device == "cpu" or (device == "auto" and not (has_torch() and _nvidia_present())):
        return "cpu"
    if not has_torch():
        raise RuntimeError("--device cuda needs torch, which this standalone binary leaves out: use the Python "
                           "package with pip install 'odp[torch]'" if getattr(sys, "frozen", False)
                           else "--device cuda needs torch: pip install 'odp[torch]'")
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU")
    return "cpu"


def pick_backend(backend: str, device: str, has_graphs: bool) -> str:
    """"auto": ONNX Runtime on a CPU where it and the model's graphs are installed, else torch."""
    source = "ODP_BACKEND: " if backend == "auto" and "ODP_BACKEND" in os.environ else ""
    backend = os.environ.get("ODP_BACKEND", "auto") if backend == "auto" else backend
    if backend not in BACKENDS:
        raise ValueError(f"{source}unknown backend '{backend}' (use auto, onnx or torch)")
    onnx_ok = importlib.util.find_spec("onnxruntime") is not None
    if backend == "auto":
        backend = "onnx" if device == "cpu" and onnx_ok and has_graphs else "torch"
    if backend == "onnx" and not (onnx_ok and has_graphs):
        raise ModelNotFound("the onnx backend needs onnxruntime and the model's ONNX graphs "
                            "(python -m odp.codec.training.onnx)")
    if backend == "onnx" and device != "cpu":
        raise RuntimeError("the onnx backend runs on the CPU; use the torch backend for CUDA")
    if backend == "torch" and not has_torch():
        raise RuntimeError("this needs torch (pip install 'odp[torch]'), or the model's ONNX graphs")
    return backend


def open_network(model, device: str = "auto", backend: str = "auto") -> Network:
    """The network of `model` (a registry Entry, or a weights.Model whose tokenizer is used as it is)."""
    entry = getattr(model, "entry", model)
    if hasattr(model, "tokenizer"):  # a torch network in hand (a fine-tune, a test): run exactly it
        backend = "torch" if backend == "auto" else backend
    device = pick_device(device)
    from . import net_onnx

    backend = pick_backend(backend, device, net_onnx.has_graphs(entry))
    if backend == "onnx":
        return net_onnx.OnnxNetwork(entry)
    from . import net_torch

    return net_torch.TorchNetwork(model, device)
