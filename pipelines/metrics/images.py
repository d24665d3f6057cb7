"""Image-quality metrics for batches of images (PSNR, SSIM) and the Fréchet distance between
Gaussians fitted to two feature sets, each tested against a brute-force or closed form
(tests/pipelines/test_image_metrics.py).

Images are ``(N, C, H, W)`` or ``(N, H, W)`` numpy arrays or torch tensors; ``data_range`` is
always explicit (2.0 for images in [-1, 1], 255 for uint8) so that no metric guesses it from the
dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _as_images(x: ArrayLike, name: str) -> np.ndarray:
    """``(N, C, H, W)`` float64 numpy from a numpy array or tensor of ``(N, C, H, W)``/``(N, H, W)``."""
    a = _to_numpy(x)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected (N, C, H, W) or (N, H, W) images, got shape {a.shape}")
    return a.astype(np.float64)


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_images(pred, "pred"), _as_images(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    return p, t


def psnr(pred: ArrayLike, truth: ArrayLike, data_range: float) -> np.ndarray:
    """Per-image PSNR in dB, ``(N,)``: ``10 log10(data_range^2 / MSE)`` over all C*H*W values.

    Identical images give ``inf`` (MSE = 0).
    """
    p, t = _pair(pred, truth)
    out = np.empty(p.shape[0])
    with np.errstate(divide="ignore"):
        for i in range(p.shape[0]):
            out[i] = peak_signal_noise_ratio(t[i], p[i], data_range=data_range)
    return out


def ssim(pred: ArrayLike, truth: ArrayLike, data_range: float) -> np.ndarray:
    """Per-image mean SSIM, ``(N,)`` (skimage defaults: 7x7 uniform window).

    Single-channel images are compared as ``(H, W)``; with C > 1 the channel axis is 0.
    """
    p, t = _pair(pred, truth)
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        if p.shape[1] == 1:
            out[i] = structural_similarity(t[i, 0], p[i, 0], data_range=data_range)
        else:
            out[i] = structural_similarity(t[i], p[i], data_range=data_range, channel_axis=0)
    return out


def summary(pred: ArrayLike, truth: ArrayLike, data_range: float) -> dict[str, Any]:
    """``{"psnr", "ssim", "n"}``: mean PSNR (dB, over finite values) and mean SSIM of a batch."""
    ps, ss = psnr(pred, truth, data_range), ssim(pred, truth, data_range)
    finite = ps[np.isfinite(ps)]
    return {
        "psnr": float(finite.mean()) if finite.size else float("inf"),
        "ssim": float(ss.mean()),
        "n": int(ps.shape[0]),
    }


# --- Fréchet distance between Gaussians ------------------------------------------------------


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet(mu_a: ArrayLike, cov_a: ArrayLike, mu_b: ArrayLike, cov_b: ArrayLike) -> float:
    """Fréchet (2-Wasserstein squared) distance between ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``:

        ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}),

    in float64. ``tr (S_a S_b)^{1/2} = tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}`` (same eigenvalues), and
    the latter is a symmetric PSD matrix, so the trace is the sum of square roots of its
    eigenvalues: stable, real, no complex ``sqrtm``. Means ``(D,)``, covariances ``(D, D)``.
    """
    ma, mb = (_to_numpy(m).astype(np.float64).reshape(-1) for m in (mu_a, mu_b))
    sa, sb = (np.atleast_2d(_to_numpy(c).astype(np.float64)) for c in (cov_a, cov_b))
    d = ma.shape[0]
    if mb.shape != (d,) or sa.shape != (d, d) or sb.shape != (d, d):
        raise ValueError(
            f"gaussian_frechet: shapes disagree: mu {ma.shape}/{mb.shape}, cov {sa.shape}/{sb.shape}"
        )
    root_a = _sqrtm_psd(sa)
    m = root_a @ sb @ root_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = ma - mb
    value = float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt)
    return max(value, 0.0)


def gaussian_fit(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of features ``(N, D)``, N >= 2."""
    f = _to_numpy(feats)
    f = f.astype(np.float64).reshape(f.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError(f"gaussian_fit: need at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``(N_a, D)`` and ``(N_b, D)``.

    On the stdiff FMNIST classifier's penultimate features this is the "Fréchet distance on the
    stdiff FMNIST classifier's features" (not FID: the features are not Inception's).
    """
    mu_a, cov_a = gaussian_fit(feats_a)
    mu_b, cov_b = gaussian_fit(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"frechet_distance: feature sizes differ ({mu_a.shape} vs {mu_b.shape})")
    return gaussian_frechet(mu_a, cov_a, mu_b, cov_b)
