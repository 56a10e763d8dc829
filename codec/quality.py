"""The measures rate control aims at (`--psnr`, `--msssim`, `--scale psnr`): PSNR and MS-SSIM of 8-bit RGB.

The benchmark's other metrics (LPIPS, DISTS) live in codec/evaluation/; these two belong to
the codec because the encoder itself searches for the smallest file that reaches them.
"""
from __future__ import annotations

import math

import numpy as np

MS_SSIM_MIN_SIDE = 161  # five scales of an 11-tap window


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all RGB samples, 8-bit peak."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, 5 scales, data range 255); NaN below 161 px, where it is undefined."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return float("nan")
    ta, tb = (torch.from_numpy(np.array(x, copy=True)).permute(2, 0, 1)[None].float() for x in (a, b))
    return float(_ms_ssim(ta, tb, data_range=255.0))
