"""Inverse-problem wrappers against exact Gaussian posteriors.

Data: a correlated Gaussian on a 2 x 2 image (d = 4), whose exact denoiser is closed form; for a
mask ``y = x[known]`` the posterior of the unknown pixels is Gaussian with
``mu_u + S_uk S_kk^-1 (y - mu_k)`` and ``S_uu - S_uk S_kk^-1 S_ku``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.inverse import InverseConfig, cgls_pinv, repaint_walk, solve, summarize
from stdiff.diffusion.operators import Downsample, FourierMask, Mask, Radon
from stdiff.diffusion.schedules import edm

COV = torch.tensor(
    [[1.0, 0.8, 0.6, 0.3], [0.8, 1.0, 0.5, 0.4], [0.6, 0.5, 1.0, 0.7], [0.3, 0.4, 0.7, 1.0]],
    dtype=torch.float64,
)
MU = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64)
GM = GaussianMixture(MU[None], COV[None])
KNOWN = torch.tensor([1.0, 0.0, 0.0, 1.0])  # pixels (0,0) and (1,1) known


def denoiser(x, sigma, cond=None):
    return (
        GM.denoise(x.reshape(x.shape[0], -1).double(), sigma.double()).reshape(x.shape).to(x.dtype)
    )


def posterior(y_known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k, u = KNOWN.bool(), ~KNOWN.bool()
    skk, suk, suu = COV[k][:, k], COV[u][:, k], COV[u][:, u]
    gain = suk @ torch.linalg.inv(skk)
    return MU[u] + gain @ (y_known - MU[k]), suu - gain @ suk.T


def run(cfg: InverseConfig, n: int = 4000, steps: int = 40, seed: int = 0):
    op = Mask(KNOWN.reshape(2, 2))
    truth = torch.tensor([1.2, 0.0, 0.0, 1.0]).reshape(1, 1, 2, 2).expand(n, 1, 2, 2)
    y = op(truth)
    sig = edm(0.002, 80.0).discretize(steps)
    x, evals = solve(
        denoiser, op, y, (n, 1, 2, 2), sig, cfg, generator=torch.Generator().manual_seed(seed)
    )
    flat = x.reshape(n, 4).double()
    return flat, evals, posterior(truth[0].reshape(4)[KNOWN.bool()].double())


def test_repaint_walk_counts_and_shape() -> None:
    walk = repaint_walk(250, 10, 10)
    down = sum(1 for a, b in itertools.pairwise(walk) if b > a)
    assert (walk[0], walk[-1], down) == (0, 250, 2410)  # RePaint's ~2,400 evaluations
    assert repaint_walk(5, 10, 1) == list(range(6))  # no resampling: the plain descent
    assert all(abs(b - a) in (1,) for a, b in itertools.pairwise(walk) if b > a)
    with pytest.raises(ValueError, match="at least 1"):
        repaint_walk(10, 0, 2)


def test_replacement_keeps_the_known_pixels_and_repaint_approaches_the_posterior() -> None:
    rep, ev_rep, (mean, cov) = run(InverseConfig("replacement", sampler="ddpm"))
    assert ev_rep == 40
    known = KNOWN.bool()
    assert torch.allclose(rep[:, known], torch.tensor([1.2, 1.0], dtype=torch.float64), atol=1e-5)
    err_rep = (rep[:, ~known].mean(0) - mean).abs().max()
    # replacement is biased towards the prior when pixels correlate; resampling harmonises, and
    # on a fine grid (the ancestral step's discretisation error shrinks) reaches the posterior
    assert err_rep > 0.2
    rp, ev_rp, _ = run(InverseConfig("repaint", jump_length=1, resample=10), steps=160)
    assert ev_rp == 160 + 9 * 159
    assert (rp[:, ~known].mean(0) - mean).abs().max() < 0.05
    assert torch.allclose(torch.cov(rp[:, ~known].T), cov, atol=0.03)


def test_dps_moves_towards_the_posterior() -> None:
    prior_err = (
        (MU[~KNOWN.bool()] - posterior(torch.tensor([1.2, 1.0], dtype=torch.float64))[0])
        .abs()
        .max()
    )
    x, evals, (mean, _) = run(InverseConfig("dps", sampler="ddpm", zeta=0.5), n=2000)
    err = (x[:, ~KNOWN.bool()].mean(0) - mean).abs().max()
    resid = (x[:, KNOWN.bool()] - torch.tensor([1.2, 1.0], dtype=torch.float64)).abs().mean()
    # DPS is approximate: the mean is close to the posterior's, the fit to y loose (the prior is
    # 0.7 away from y on both known pixels)
    assert evals == 40 and err < 0.2 * prior_err and resid < 0.3 * 0.7


def test_fourier_consistency_matches_the_measured_kspace() -> None:
    gm = GaussianMixture(torch.zeros(1, 64), torch.eye(64)[None] * 0.5)
    mask = torch.zeros(8)
    mask[[0, 3, 4, 5]] = 1
    op = FourierMask(mask)
    truth = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = op(truth)

    def den(x, s, c=None):
        return gm.denoise(x.reshape(x.shape[0], -1).double(), s.double()).reshape(x.shape).float()

    sig = edm(0.002, 80.0).discretize(20)
    x, _ = solve(den, op, y, truth.shape, sig, InverseConfig("consistency", sampler="pc"))
    assert torch.allclose(op(x), y, atol=1e-4)  # measured k-space reproduced
    assert not torch.allclose(x, truth, atol=1e-2)  # the rest is sampled, not copied


def test_summarize_and_config_errors() -> None:
    s = torch.arange(12.0).reshape(2, 3, 2)
    mean, std = summarize(s)
    assert torch.equal(mean, s.mean(1)) and torch.allclose(std, s.std(1))
    with pytest.raises(ValueError, match="method 'paint'"):
        InverseConfig("paint")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampler 'nope'"):
        InverseConfig(sampler="nope")
    with pytest.raises(ValueError, match="zeta"):
        run(InverseConfig("dps", zeta=-1.0), n=2)


def test_cgls_pseudo_inverse() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    down = Downsample(2)
    r = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(cgls_pinv(down, r), down.pinv(r), atol=1e-8)  # the closed form
    radon = Radon(8, n_views=5)  # underdetermined: 40 measurements, 64 unknowns
    y = radon(x)
    d = cgls_pinv(radon, y, iters=200)
    assert torch.allclose(radon(d), y, atol=1e-6)  # fits the data
    assert d.flatten(1).norm(dim=1).le(x.flatten(1).norm(dim=1) + 1e-9).all()  # minimum norm


def _dense(op, shape) -> torch.Tensor:
    """The operator as a matrix, column by column (brute force)."""
    n = int(torch.tensor(shape).prod())
    cols = [op(torch.eye(n, dtype=torch.float64)[i].reshape(shape)).reshape(-1) for i in range(n)]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("name", ["mask", "downsample", "blur"])
def test_data_prox_is_the_exact_proximal_point(name: str) -> None:
    from stdiff.diffusion.inverse import data_prox
    from stdiff.diffusion.operators import Blur

    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 6, 6)
    op = {"mask": Mask((torch.rand(6, 6, generator=g) > 0.5).float()), "downsample": Downsample(2),
          "blur": Blur(1.0)}[name]  # fmt: skip
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    y = op(torch.randn(shape, generator=g, dtype=torch.float64))
    a, rho = _dense(op, shape), 0.3
    exact = torch.linalg.solve(a.T @ a + rho * torch.eye(36, dtype=torch.float64),
                               a.T @ y.reshape(-1) + rho * x0.reshape(-1))  # fmt: skip
    z = data_prox(op, y, x0, rho, iters=100)
    assert torch.allclose(z.reshape(-1), exact, atol=1e-8)
    if name == "mask":  # two distinct eigenvalues: conjugate gradients is exact in two steps
        assert torch.allclose(data_prox(op, y, x0, rho, iters=2).reshape(-1), exact, atol=1e-10)


def test_diffpir_keeps_the_data_and_approaches_the_posterior_with_noise_mixing() -> None:
    known = KNOWN.bool()
    prior_err = (MU[~known] - posterior(torch.tensor([1.2, 1.0], dtype=torch.float64))[0]).abs()
    x, evals, (mean, _) = run(InverseConfig("diffpir", mix=1.0), steps=100)
    assert evals == 100  # one evaluation per step
    assert torch.allclose(x[:, known], torch.tensor([1.2, 1.0], dtype=torch.float64), atol=0.02)
    assert (x[:, ~known].mean(0) - mean).abs().max() < 0.1 * prior_err.max()
    det, _, _ = run(InverseConfig("diffpir", mix=0.0), steps=100)  # deterministic: biased like
    assert (det[:, ~known].mean(0) - mean).abs().max() > 0.3  # replacement, towards the prior
    with pytest.raises(ValueError, match="diffpir needs lam > 0"):
        InverseConfig("diffpir", mix=1.5)
