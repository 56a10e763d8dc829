"""Image quality metrics shared by the benchmark and the TUI: PSNR, MS-SSIM, LPIPS, DISTS.

All take 8-bit RGB arrays (H x W x 3). LPIPS and DISTS need the converted weights of
`odp fetch-metrics` (see docs/metrics.md); `Scorer` embeds the reference image once so
that scoring many candidates against it costs one network pass each.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..quality import MS_SSIM_MIN_SIDE, ms_ssim, psnr  # noqa: F401  (the codec's own measures, re-exported)
from .settings import METRICS

HIGHER_IS_BETTER = {"psnr": True, "ms-ssim": True, "lpips-alex": False, "lpips-vgg": False, "dists": False}
DEEP = {"lpips-alex": "alex", "lpips-vgg": "vgg", "dists": "dists"}


def seam_ratio(image: np.ndarray, tile: int = 256) -> float:
    """Mean absolute pixel step across tile borders over the mean step inside tiles.

    About 1 when tiles join invisibly; a visible seam raises it. NaN for a single tile.
    """
    x = image.astype(np.float64)
    dx = np.abs(np.diff(x, axis=1)).mean(axis=(0, 2))  # step between column c and c+1
    dy = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))
    border_x = np.arange(tile - 1, len(dx), tile)
    border_y = np.arange(tile - 1, len(dy), tile)
    if not len(border_x) and not len(border_y):
        return float("nan")
    inside_x, inside_y = np.delete(dx, border_x), np.delete(dy, border_y)
    border = np.concatenate([dx[border_x], dy[border_y]]).mean()
    inside = np.concatenate([inside_x, inside_y]).mean()
    return float(border / max(inside, 1e-9))


def better(metric: str, x: float, y: float) -> bool:
    """Whether score x is strictly better than y for this metric."""
    return x > y if HIGHER_IS_BETTER[metric] else x < y


def to_tensor(a: np.ndarray, device: str):
    import torch

    t = torch.from_numpy(np.array(a, copy=True)).to(device).permute(2, 0, 1)[None].float() / 255
    return t.contiguous(memory_format=torch.channels_last)  # same values, ~1.6x faster convolutions on CPU


def _no_grad(deep: bool):
    """torch.no_grad() when deep metrics run, else nothing (PSNR and MS-SSIM need no torch)."""
    if not deep:
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


class Scorer:
    """Scores candidate images against one reference, for the chosen metrics."""

    def __init__(self, reference: np.ndarray, metrics=METRICS, device: str = "cpu") -> None:
        """LPIPS and DISTS need torch (the bench extra); PSNR and MS-SSIM are numpy."""

        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric {sorted(unknown)[0]!r}: choose from {', '.join(METRICS)}")
        self.reference, self.metrics, self.device = reference, tuple(metrics), device
        self.nets, self.ref_features = {}, {}
        deep_ok = min(reference.shape[:2]) >= 32
        for m in self.metrics:
            if m in DEEP and deep_ok:
                import torch

                from . import perceptual

                net = perceptual.get(DEEP[m], device).to(memory_format=torch.channels_last)
                self.nets[m] = net
                with torch.no_grad():
                    self.ref_features[m] = net.embed(to_tensor(reference, device))

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        out = {}
        with _no_grad(bool(self.nets)):
            t = to_tensor(image, self.device) if self.nets else None
            for m in self.metrics:
                if m == "psnr":
                    out[m] = psnr(self.reference, image)
                elif m == "ms-ssim":
                    out[m] = ms_ssim(self.reference, image)
                elif m in self.nets:
                    out[m] = float(self.nets[m].compare(self.ref_features[m], self.nets[m].embed(t))[0])
                else:
                    out[m] = float("nan")  # image under 32 px: LPIPS/DISTS undefined
        return out
