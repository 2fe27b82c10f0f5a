"""Frame-quality metrics of generated video against real video: PSNR and SSIM per frame, over whole frames or a
pixel mask (the pixels that move), and their summaries per horizon (used by the world model's evaluation)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 60.0  # identical frames


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """``[1, 1, size, size]`` normalised 2D Gaussian."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()[None, None]


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004; K1 = 0.01, K2 = 0.03) of ``[N, C, H, W]`` images, averaged over channels:
    ``[N, H, W]``. Local statistics use the Gaussian ``window`` with reflect padding, so the map aligns with pixels."""
    n, c, h, w = a.shape
    pad = window.shape[-1] // 2
    kernel = window.to(a.dtype).expand(c, 1, *window.shape[-2:])

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean(1)


def psnr_from_mse(mse: torch.Tensor, peak: float = 255.0) -> torch.Tensor:
    return (10.0 * torch.log10(peak**2 / mse.clamp_min(1e-12))).clamp(max=PSNR_CAP_DB)


class FrameErrors:
    """Per-pixel squared error and SSIM maps of predicted vs real frames ``uint8 [R, H, 64, 64, 3]``."""

    def __init__(self, predicted: np.ndarray, real: np.ndarray, window: torch.Tensor, chunk: int = 64) -> None:
        if predicted.shape != real.shape:
            raise ValueError(f"predicted frames {predicted.shape} and real frames {real.shape} differ in shape")
        r, t = real.shape[:2]
        sq, ss = [], []
        flat_p = predicted.reshape(-1, *real.shape[2:])
        flat_r = real.reshape(-1, *real.shape[2:])
        for s in range(0, len(flat_r), chunk):
            p = torch.from_numpy(flat_p[s : s + chunk]).float().permute(0, 3, 1, 2)
            q = torch.from_numpy(flat_r[s : s + chunk]).float().permute(0, 3, 1, 2)
            sq.append((p - q).pow(2).mean(1))
            ss.append(ssim_map(p / 255.0, q / 255.0, window))
        self.squared_error = torch.cat(sq).reshape(r, t, *real.shape[2:4])  # [R, T, H, W], 0..255 units
        self.ssim = torch.cat(ss).reshape(r, t, *real.shape[2:4])

    def at(self, frame: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-rollout (PSNR, SSIM) of ``frame`` (0-based), over ``mask`` ``[R, H, W]`` pixels if given (NaN where
        a rollout's mask is empty)."""
        sq, ss = self.squared_error[:, frame], self.ssim[:, frame]
        if mask is None:
            return psnr_from_mse(sq.flatten(1).mean(1)), ss.flatten(1).mean(1)
        m = mask.float().flatten(1)
        count = m.sum(1)
        mse = (sq.flatten(1) * m).sum(1) / count.clamp_min(1)
        ssim = (ss.flatten(1) * m).sum(1) / count.clamp_min(1)
        empty = count == 0
        return psnr_from_mse(mse).masked_fill(empty, math.nan), ssim.masked_fill(empty, math.nan)


def moving_masks(real: np.ndarray, reference: np.ndarray, threshold: float) -> torch.Tensor:
    """bool ``[R, T, H, W]``: pixel changed (some channel by > ``threshold`` of the range) from ``reference``
    ``[R, H, W, 3]`` in any real frame up to and including ``t``."""
    diff = np.abs(real.astype(np.int16) - reference[:, None].astype(np.int16)).max(-1) > threshold * 255
    return torch.from_numpy(np.maximum.accumulate(diff, axis=1))


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None


def horizon_metrics(errors: FrameErrors, masks: torch.Tensor, horizons: Sequence[int]) -> dict:
    """``{str(h): {psnr, ssim, psnr_mean, ssim_mean, psnr_moving, ssim_moving, psnr_moving_mean, ssim_moving_mean}}``."""
    out = {}
    for h in horizons:
        frame = h - 1
        psnr, ssim = errors.at(frame)
        psnr_m, ssim_m = errors.at(frame, masks[:, frame])
        upto = [errors.at(t) for t in range(h)]
        upto_m = [errors.at(t, masks[:, frame]) for t in range(h)]
        out[str(h)] = {
            "psnr": float(psnr.mean()),
            "ssim": float(ssim.mean()),
            "psnr_mean": float(torch.stack([p for p, _ in upto]).mean()),
            "ssim_mean": float(torch.stack([s for _, s in upto]).mean()),
            "psnr_moving": _nanmean(psnr_m),
            "ssim_moving": _nanmean(ssim_m),
            "psnr_moving_mean": _nanmean(torch.stack([p for p, _ in upto_m]).mean(0)),
            "ssim_moving_mean": _nanmean(torch.stack([s for _, s in upto_m]).mean(0)),
            "rollouts_with_moving_pixels": int((masks[:, frame].flatten(1).any(1)).sum()),
        }
    return out
