"""The tokenizer on torch: the CUDA path, and the CPU fallback where a model has no ONNX graphs."""
from __future__ import annotations

import numpy as np
import torch

from . import weights


class TorchNetwork:
    backend = "torch"

    def __init__(self, model, device: str):
        self.model = model if hasattr(model, "tokenizer") else weights.for_entry(model)
        self.device = device
        self.net = self.model.tokenizer.to(device)

    def _unit(self, tiles: np.ndarray | None) -> torch.Tensor | None:
        if tiles is None:
            return None
        return torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1

    @torch.inference_mode()
    def encode(self, tiles: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self.net.encode(self._unit(tiles), self._unit(cond)).cpu().numpy().astype(np.int32)

    @torch.inference_mode()
    def decode(self, ids: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        y = self.net.decode(torch.from_numpy(ids.astype(np.int64)).to(self.device), self._unit(cond))
        return torch.round((y + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
