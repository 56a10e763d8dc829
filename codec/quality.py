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


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


def _gaussian_blur(x: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian filter over the first two axes, 'valid' (no padding): the SSIM window."""
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    if x.shape[0] >= size:
        n = x.shape[0] - size + 1
        x = sum(g[i] * x[i:i + n] for i in range(size))
    if x.shape[1] >= size:
        n = x.shape[1] - size + 1
        x = sum(g[i] * x[:, i:i + n] for i in range(size))
    return x


def _ssim_parts(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """(SSIM, contrast-structure) per channel, as the means of their maps."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my, xx, yy, xy = np.split(_gaussian_blur(np.concatenate([x, y, x * x, y * y, x * y], 2)), 5, 2)
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return (((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs).mean((0, 1)), cs.mean((0, 1))


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average, an odd side first padded with a zero row/column at both ends (counted in the mean)."""
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    x = np.pad(x, ((ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean((1, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of 8-bit RGB (5 scales, 11-tap Gaussian window, data range 255), the mean over channels;
    NaN below 161 px, where it is undefined. The same computation as pytorch-msssim's ms_ssim, in
    numpy, so that MS-SSIM targets need no torch."""
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return float("nan")
    x, y = a.astype(np.float64), b.astype(np.float64)
    parts = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_parts(x, y)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            parts.append(np.maximum(cs, 0))
            x, y = _halve(x), _halve(y)
    parts.append(np.maximum(ssim, 0))
    return float(np.prod(np.array(parts) ** np.array(MS_SSIM_WEIGHTS)[:, None], 0).mean())
