"""The CRPS-trained one-evaluation generator (``loop.objective: crps``, ``stdiff distill --method
crps``): its two-member fair estimator against the closed-form CRPS of a Gaussian, properness (the
loss pulls an affine generator to the data's own mean and spread), and the fine-tuning start (the
exact denoiser's collapsed members spread to the data's)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

from stdiff.diffusion.losses import crps_loss

SIGMA = 80.0


def _affine(a: torch.Tensor, b: torch.Tensor):
    """A generator ``x = a + b z`` written as a denoiser evaluated at ``SIGMA`` (input sigma z)."""
    return lambda x, sigma, cond=None: a + b * x / sigma[:, None]


def gaussian_crps(mu: np.ndarray, sd: float, y: np.ndarray) -> np.ndarray:
    """CRPS(N(mu, sd^2), y) (Gneiting & Raftery 2007, eq. 5)."""
    w = (y - mu) / sd
    return sd * (w * (2 * norm.cdf(w) - 1) + 2 * norm.pdf(w) - 1 / math.sqrt(math.pi))


def test_two_member_estimator_is_the_gaussian_crps_in_expectation() -> None:
    rows, dim, a, b = 4000, 100, 0.3, 1.7
    y = torch.from_numpy(np.random.default_rng(0).normal(0.0, 2.0, (rows, dim)))
    den = _affine(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    terms = torch.stack([crps_loss(den, y[i : i + 1], SIGMA, generator=g) for i in range(rows)])
    want = gaussian_crps(np.full(y.shape, a), b, y.numpy()).mean(1)  # per row, exact
    # each row's estimate is unbiased: the mean error is within 4 standard errors of zero
    err = terms.numpy() - want
    assert abs(err.mean()) < 4 * err.std() / math.sqrt(rows), (err.mean(), err.std())


def test_crps_training_recovers_the_data_mean_and_spread() -> None:
    mu, sd = torch.tensor([1.5, -2.0, 0.0]), torch.tensor([0.5, 2.0, 1.0])
    a = torch.zeros(3, requires_grad=True)
    log_b = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([a, log_b], lr=0.03)
    g = torch.Generator().manual_seed(0)
    for step in range(3000):
        for group in opt.param_groups:
            group["lr"] = 0.03 if step < 2000 else 0.005
        y = mu + sd * torch.randn(256, 3, generator=g)
        loss = crps_loss(_affine(a, log_b.exp()), y, SIGMA, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(a.detach(), mu, atol=0.06, rtol=0)
    torch.testing.assert_close(log_b.exp().detach(), sd, rtol=0.06, atol=0)


def test_crps_fine_tuning_spreads_the_exact_denoisers_collapsed_members() -> None:
    """``stdiff distill --method crps`` starts from a trained denoiser. At the top level the exact
    Gaussian denoiser nearly ignores its input noise, ``D(sigma z) = mu + sd^2 sigma / (sd^2 +
    sigma^2) z``: members collapse to the mean (spread sd / sigma, 0.6-2.5 % of the data's here). Starting from
    exactly that generator, the CRPS grows the spread to the data's own: the collapsed start is
    not a stationary point (the spread term's pull does not vanish with the spread)."""
    from stdiff.diffusion.analytic import GaussianMixture

    mu, sd = torch.tensor([1.5, -2.0, 0.0]), torch.tensor([0.5, 2.0, 1.0])
    teacher = GaussianMixture(mu[None].double(), torch.diag_embed(sd**2)[None].double())
    a = (mu * SIGMA**2 / (sd**2 + SIGMA**2)).requires_grad_(True)  # the teacher's at z = 0
    b0 = sd**2 * SIGMA / (sd**2 + SIGMA**2)  # and its sensitivity to z
    b = b0.clone().requires_grad_(True)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    start = _affine(a, b)(SIGMA * z, torch.full((5,), SIGMA))
    exact = teacher.denoise(SIGMA * z.double(), SIGMA)
    torch.testing.assert_close(start.double(), exact, rtol=1e-5, atol=1e-6)  # it is the teacher
    assert bool((b0 < 0.03 * sd).all())  # sd / sigma: 0.6-2.5 % of the spread
    opt = torch.optim.Adam([a, b], lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        y = mu + sd * torch.randn(256, 3, generator=g)
        loss = crps_loss(_affine(a, b), y, SIGMA, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(a.detach(), mu, atol=0.06, rtol=0)
    torch.testing.assert_close(b.detach().abs(), sd, rtol=0.06, atol=0)
