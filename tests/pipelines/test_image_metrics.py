"""PSNR / SSIM against the formula and skimage; the Fréchet distance against closed forms and a
brute-force ``scipy.linalg.sqrtm`` computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import structural_similarity

from stdiff.pipelines.metrics.images import (
    frechet_distance,
    gaussian_fit,
    gaussian_frechet,
    psnr,
    ssim,
    summary,
)


def _images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth-ish images in [-1, 1]: a blurred random field (SSIM is meaningful on structure)."""
    x = rng.uniform(-1, 1, size=shape)
    x = (x + np.roll(x, 1, -1) + np.roll(x, 1, -2) + np.roll(x, (1, 1), (-2, -1))) / 4
    return np.clip(x * 2, -1, 1)


def test_psnr_matches_formula_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    truth = _images(rng, (5, 1, 28, 28))
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), -1, 1)
    mse = ((pred - truth) ** 2).reshape(5, -1).mean(axis=1)
    expected = 10 * np.log10(2.0**2 / mse)
    np.testing.assert_allclose(psnr(pred, truth, data_range=2.0), expected, rtol=1e-10)
    got_t = psnr(torch.from_numpy(pred).float(), torch.from_numpy(truth).float(), 2.0)
    np.testing.assert_allclose(got_t, expected, rtol=1e-5)
    # (N, H, W) and multi-channel layouts
    np.testing.assert_allclose(psnr(pred[:, 0], truth[:, 0], 2.0), expected, rtol=1e-10)
    rgb_t, rgb_p = _images(rng, (3, 3, 16, 16)), _images(rng, (3, 3, 16, 16))
    mse3 = ((rgb_p - rgb_t) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(psnr(rgb_p, rgb_t, 2.0), 10 * np.log10(4 / mse3), rtol=1e-10)


def test_psnr_uint8_range_and_identical() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (2, 1, 8, 8)).astype(np.uint8)
    pred = truth.copy()
    pred[0, 0, 0, 0] ^= 1
    got = psnr(pred, truth, data_range=255)
    assert np.isinf(got[1]) and got[1] > 0
    np.testing.assert_allclose(got[0], 10 * np.log10(255**2 / (1 / 64)), rtol=1e-10)
    assert summary(pred, truth, 255)["psnr"] == pytest.approx(got[0])


def test_ssim_identity_noise_and_skimage() -> None:
    rng = np.random.default_rng(2)
    truth = _images(rng, (4, 1, 28, 28))
    np.testing.assert_allclose(ssim(truth, truth, 2.0), 1.0)
    scores = [
        ssim(np.clip(truth + rng.normal(0, s, truth.shape), -1, 1), truth, 2.0).mean()
        for s in (0.05, 0.2, 0.6)
    ]
    assert scores[0] < 1 and scores[0] > scores[1] > scores[2]
    pred = np.clip(truth + rng.normal(0, 0.2, truth.shape), -1, 1)
    direct = [structural_similarity(truth[i, 0], pred[i, 0], data_range=2.0) for i in range(4)]
    np.testing.assert_allclose(ssim(pred, truth, 2.0), direct, rtol=1e-12)
    rgb_t = _images(rng, (2, 3, 16, 16))
    rgb_p = np.clip(rgb_t + rng.normal(0, 0.2, rgb_t.shape), -1, 1)
    direct3 = [
        structural_similarity(rgb_t[i], rgb_p[i], data_range=2.0, channel_axis=0) for i in range(2)
    ]
    np.testing.assert_allclose(ssim(rgb_p, rgb_t, 2.0), direct3, rtol=1e-12)
    s = summary(pred, truth, 2.0)
    assert s["n"] == 4 and s["ssim"] == pytest.approx(np.mean(direct))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        psnr(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9)), 1.0)
    with pytest.raises(ValueError, match="expected"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0)


def test_gaussian_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = gaussian_frechet(mu_a, np.diag(a), mu_b, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # commuting, non-diagonal: rotate both by the same orthogonal matrix
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    got_rot = gaussian_frechet(q @ mu_a, q @ np.diag(a) @ q.T, q @ mu_b, q @ np.diag(b) @ q.T)
    assert got_rot == pytest.approx(expected, rel=1e-9)
    # torch inputs
    got_t = gaussian_frechet(*(torch.as_tensor(v) for v in (mu_a, np.diag(a), mu_b, np.diag(b))))
    assert got_t == pytest.approx(expected, rel=1e-10)


def _brute_force(fa: np.ndarray, fb: np.ndarray) -> float:
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = np.real(linalg.sqrtm(sa @ sb))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa + sb - 2 * covmean))


def test_frechet_distance_brute_force_symmetry_identity() -> None:
    rng = np.random.default_rng(4)
    d = 8
    la, lb = rng.normal(size=(d, d)), rng.normal(size=(d, d))  # non-commuting covariances
    fa = rng.normal(size=(500, d)) @ la.T + 0.5
    fb = rng.normal(size=(400, d)) @ lb.T - 0.3
    got = frechet_distance(fa, fb)
    assert got == pytest.approx(_brute_force(fa, fb), rel=1e-8)
    assert frechet_distance(fb, fa) == pytest.approx(got, rel=1e-10)
    assert frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.from_numpy(fa), torch.from_numpy(fb)) == pytest.approx(got)
    mu, cov = gaussian_fit(fa)
    assert mu.shape == (d,) and cov.shape == (d, d)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(fa, fb[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(fa[:1], fb)


def test_frechet_distance_rank_deficient_is_finite() -> None:
    """Fewer samples than dimensions (singular covariances) still gives a finite value."""
    rng = np.random.default_rng(5)
    fa, fb = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
    got = frechet_distance(fa, fb)
    assert np.isfinite(got) and got > 0
    assert got == pytest.approx(_brute_force(fa, fb), rel=1e-5)
