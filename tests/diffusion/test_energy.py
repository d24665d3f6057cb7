"""Energy-parameterised denoisers and (annealed) MALA against exact answers.

Two analytic energies: a Gaussian ``N(0, diag(c^2))`` represented through the network with
``f = a(sigma) x``, and an :class:`EnergyDenoiser` whose energy is exactly
``-GaussianMixture.log_prob(x, sigma)``. Moment checks use 5 Monte-Carlo standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.energy import (
    EnergyDenoiser,
    acceptance_recorder,
    mala_step,
    sample_annealed_mala,
)
from stdiff.diffusion.likelihood import log_likelihood
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.precond import PREDICTIONS, Preconditioning
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.schedules import edm

C = torch.tensor([0.5, 1.5], dtype=torch.float64)  # per-dimension data std of the Gaussian


class GaussianNet(nn.Module):
    """The network output that makes ``f = a(sigma) x``, ``a = 1 - sigma / sqrt(c^2 + sigma^2)``,
    under any preconditioning: the energy is then exactly ``sum x^2 / (2 (c^2 + sigma^2))``."""

    def __init__(self, c: torch.Tensor, precond: Preconditioning) -> None:
        super().__init__()
        self.c, self.precond = c, precond

    def forward(self, x_in, c_noise, cond=None):
        s = (4 * c_noise).exp().reshape(-1, *([1] * (x_in.ndim - 1)))  # c_noise = ln(sigma) / 4
        c_skip, c_out, c_in = self.precond.coefficients(s)
        x = x_in / c_in
        a = 1 - s / (self.c**2 + s**2).sqrt()
        return (a - c_skip) * x / c_out


def gaussian_energy(c: torch.Tensor = C, prediction: str = "edm") -> EnergyDenoiser:
    p = Preconditioning(prediction, sigma_data=0.8)
    return EnergyDenoiser(GaussianNet(c, p), p)


class ExactEnergy(EnergyDenoiser):
    """``E = -log p_sigma`` of a Gaussian mixture (normalised, so differences are exact)."""

    def __init__(self, gm: GaussianMixture) -> None:
        super().__init__(nn.Identity(), Preconditioning())
        self.gm = gm

    def energy(self, x, sigma, cond=None):
        return -self.gm.log_prob(x, sigma)


class CountingEnergy(ExactEnergy):
    calls = 0

    def energy_and_grad(self, x, sigma, cond=None):
        self.calls += 1
        return super().energy_and_grad(x, sigma, cond)


def _points(n: int, d: int = 2, seed: int = 0, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g, dtype=torch.float64)


def _noisy_samples(gm: GaussianMixture, n: int, sigma: float, seed: int) -> torch.Tensor:
    """Exact samples of ``p_sigma``: ``x0 + sigma n``."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = gm.sample(n, g)
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def _moment_errors(x: torch.Tensor, gm: GaussianMixture, sigma: float = 0.0):
    """``(|mean error| / se, |cov error| / se)``, largest entry, against ``p_sigma`` of ``gm``."""
    n = x.shape[0]
    ref = _noisy_samples(gm, 400_000, sigma, 123)  # only for the standard errors
    c = ref - ref.mean(0)
    se_mean = (c.var(0) / n).sqrt()
    se_cov = ((c[:, :, None] * c[:, None, :]).var(0) / n).sqrt()
    cov = gm.covariance() + sigma**2 * torch.eye(gm.dim, dtype=torch.float64)
    err_mean = ((x.mean(0) - gm.mean()).abs() / se_mean).max()
    err_cov = ((torch.cov(x.T) - cov).abs() / se_cov).max()
    return float(err_mean), float(err_cov)


def _jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """``d fn(x)[b, i] / d x[b, j]`` ``(B, d, d)`` by autograd (rows independent)."""
    xg = x.clone().requires_grad_(True)
    out = fn(xg)
    rows = [torch.autograd.grad(out[:, i].sum(), xg, retain_graph=True)[0] for i in range(2)]
    return torch.stack(rows, 1)


# --- the parameterisation -------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_gaussian_energy_is_exact(prediction: str) -> None:
    """f = a(sigma) x: D is the closed-form shrinkage, E the exact log-density up to a constant."""
    ed = gaussian_energy(prediction=prediction)
    x = _points(6)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 30.0], dtype=torch.float64)
    s = sigma[:, None]
    torch.testing.assert_close(ed(x, sigma), C**2 / (C**2 + s**2) * x, rtol=1e-10, atol=1e-12)
    expect = (x**2 / (2 * (C**2 + s**2))).sum(1)
    torch.testing.assert_close(ed.energy(x, sigma), expect, rtol=1e-10, atol=0)
    gm = GaussianMixture(torch.zeros(1, 2), (C**2)[None])
    y = _points(6, seed=1)
    exact = gm.log_prob(x, sigma) - gm.log_prob(y, sigma)
    torch.testing.assert_close(
        ed.log_density(x, sigma) - ed.log_density(y, sigma), exact, rtol=1e-10, atol=1e-12
    )


def test_exact_energy_gives_mixture_denoiser(mixture: GaussianMixture) -> None:
    """x - sigma^2 grad E with E = -log p_sigma is the mixture's denoiser, and so is its Jacobian."""
    ed = ExactEnergy(mixture)
    x = _points(8, scale=2.0)
    for sigma in (0.05, 0.5, 3.0):
        torch.testing.assert_close(ed(x, sigma), mixture.denoise(x, sigma), rtol=0, atol=1e-6)
    sig = torch.linspace(0.1, 2.0, 8, dtype=torch.float64)
    torch.testing.assert_close(
        _jacobian(lambda v: ed(v, sig), x),
        _jacobian(lambda v: mixture.denoise(v, sig), x),
        rtol=0,
        atol=1e-8,
    )


def _mlp_energy(hidden: int = 16, sigma_data: float = 0.5, seed: int = 0) -> EnergyDenoiser:
    """A tiny energy MLP; its initialisation alone draws from a forked global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLPNet(2, hidden=hidden, depth=1)
    return EnergyDenoiser(net, Preconditioning("edm", sigma_data=sigma_data))


class TanhNet(nn.Module):
    """A smooth float64 network ``F([x_in, c_noise])`` (MLPNet's embedding is float32 only)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(3, 16, generator=g, dtype=torch.float64) / 2)
        self.b1 = nn.Parameter(torch.randn(16, generator=g, dtype=torch.float64) / 4)
        self.w2 = nn.Parameter(torch.randn(16, 2, generator=g, dtype=torch.float64) / 4)

    def forward(self, x_in, c_noise, cond=None):
        h = torch.cat([x_in, c_noise[:, None].to(x_in.dtype)], 1)
        return torch.tanh(h @ self.w1 + self.b1) @ self.w2


def _tanh_energy() -> EnergyDenoiser:
    return EnergyDenoiser(TanhNet(), Preconditioning("edm", sigma_data=0.5))


def test_second_derivatives_match_finite_differences() -> None:
    """d D / d x (leaf and non-leaf x) and d/d theta of D against central differences."""
    ed = _tanh_energy()
    x, sigma, h = _points(3, scale=0.7), torch.tensor([0.2, 0.6, 1.5], dtype=torch.float64), 1e-5
    jac = _jacobian(lambda v: ed(v, sigma), x)
    jac_nonleaf = _jacobian(lambda v: ed(2.0 * v / 2.0, sigma), x)
    with torch.no_grad():
        fd = torch.stack(
            [
                (ed(x + h * e, sigma) - ed(x - h * e, sigma)) / (2 * h)
                for e in torch.eye(2, dtype=torch.float64)
            ],
            2,
        )
    torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(jac_nonleaf, fd, rtol=1e-6, atol=1e-7)
    # parameters (the training path): a directional derivative along a random direction
    params = list(ed.parameters())
    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    w = _points(3, seed=2)
    grads = torch.autograd.grad((ed(x, sigma) * w).sum(), params)
    auto = sum(float((gr * d).sum()) for gr, d in zip(grads, dirs, strict=True))

    def loss_at(t: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(t * d)
            out = float((ed(x, sigma) * w).sum())
            for p, d in zip(params, dirs, strict=True):
                p.sub_(t * d)
            return out

    assert auto == pytest.approx((loss_at(h) - loss_at(-h)) / (2 * h), rel=1e-6)


def test_grad_modes() -> None:
    """no_grad: detached, same values; grad mode with a plain x: graph to the parameters only."""
    ed = _tanh_energy()
    x, sigma = _points(4), 0.7
    with_graph = ed(x, sigma)
    assert with_graph.requires_grad and not x.requires_grad
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        out = ed(xg, sigma)
        e, gr = ed.energy_and_grad(x, sigma)
    assert out.grad_fn is None and not out.requires_grad
    assert e.grad_fn is None and gr.grad_fn is None and xg.grad is None
    torch.testing.assert_close(out, with_graph.detach())
    torch.testing.assert_close(e, ed.energy(x, sigma).detach())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        ed(x, sigma)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
    ],
)
def test_bf16_autocast(device: str) -> None:
    """Under bf16 autocast the network runs in bf16 but energy and output stay float32."""
    ed = _mlp_energy().to(device)
    x = _points(4).float().to(device)
    ref = ed(x, 0.5).detach()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = ed(x, 0.5)
        e = ed.energy(x, 0.5)
        loss = out.pow(2).mean()
    loss.backward()
    assert out.dtype == torch.float32 and e.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.detach(), ref, rtol=0.1, atol=0.1)
    assert all(p.grad is not None for p in ed.parameters())


def test_log_likelihood_through_energy() -> None:
    """The ODE likelihood (exact trace: d D/d x through double backprop) equals log N(x; 0, c^2)."""
    ed = gaussian_energy()
    gm = GaussianMixture(torch.zeros(1, 2), (C**2)[None])
    x, _ = gm.sample(4, torch.Generator().manual_seed(4))
    ll = log_likelihood(ed, x, sigma_min=1e-3, sigma_max=1000.0, rtol=1e-6, atol=1e-6)
    exact = gm.log_prob(x, 1e-3)
    torch.testing.assert_close(ll.log_prob, exact, rtol=0, atol=1e-4)  # observed ~1e-5


# --- MALA ------------------------------------------------------------------------------------


def test_mala_leaves_target_invariant(mixture: GaussianMixture) -> None:
    """From exact samples of p_sigma, MALA keeps the moments even with a step at which the
    unadjusted chain visibly inflates the covariance."""
    sigma, n = 0.3, 10_000
    ed = ExactEnergy(mixture)
    x0 = _noisy_samples(mixture, n, sigma, 7)
    for step, metropolis in ((0.1 * sigma**2, True), (0.5, True), (0.5, False)):
        g = torch.Generator().manual_seed(8)
        x, probs = x0, []
        for _ in range(10):
            x, p = mala_step(ed, x, sigma, None, step, g, metropolis=metropolis)
            probs.append(p)
        acc = torch.stack(probs)
        assert bool(((acc >= 0) & (acc <= 1)).all())
        err_mean, err_cov = _moment_errors(x, mixture, sigma)
        if metropolis:
            assert err_mean < 5 and err_cov < 5, (step, err_mean, err_cov)
            assert 0 < float(acc.mean()) <= 1
            if step == 0.5:
                assert float(acc.mean()) < 0.9  # a big step: rejections really happen
            else:
                assert float(acc.mean()) > 0.98
        else:
            assert err_cov > 20, err_cov  # ULA's bias at this step


def test_mala_per_member_and_tensor_step(mixture: GaussianMixture) -> None:
    """Member m moves the same alone or inside a batch; a (B,) step size is per element."""
    ed = ExactEnergy(mixture)
    x = _points(4)
    step = torch.tensor([0.05, 0.5, 0.2, 0.3], dtype=torch.float64)
    batch, _ = mala_step(ed, x, 0.4, None, step, member_generators(3, 4))
    alone, _ = mala_step(ed, x[2:3], 0.4, None, step[2:3], member_generators(3, [2]))
    torch.testing.assert_close(batch[2:3], alone)
    again, _ = mala_step(ed, x, 0.4, None, step, member_generators(3, 4))
    assert torch.equal(batch, again)
    with pytest.raises(ValueError, match="positive"):
        mala_step(ed, x, 0.4, None, 0.0, None)


# --- annealed sampling -----------------------------------------------------------------------


def test_annealed_mala_moments(mixture: GaussianMixture) -> None:
    """16 steps: the MALA corrector brings the moments within 5 standard errors; the plain DDIM
    predictor at the same steps is far off."""
    ed = ExactEnergy(mixture)
    sig = edm().discretize(16)
    errs = {}
    for k in (0, 2):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(10_000, 2, generator=g, dtype=torch.float64) * sig[0]
        records, cb = acceptance_recorder()
        out = sample_annealed_mala(
            ed, x, sig, generator=g, callback=cb, corrector_steps=k, step_scale=1.0
        )
        errs[k] = _moment_errors(out, mixture)
        assert len(records) == (15 if k else 0)
        assert all(0.5 < r["accept"] <= 1 for r in records)
    assert errs[2][0] < 5 and errs[2][1] < 5, errs
    assert errs[0][1] > 3 * errs[2][1], errs


def test_annealed_mala_contract(mixture: GaussianMixture) -> None:
    """Evaluation count, determinism, callback keys, a callback that replaces x, eta = 1, ULA."""
    ed = CountingEnergy(mixture)
    rng_state = torch.get_rng_state()
    sig = edm().discretize(6)
    x = _points(5) * sig[0]
    seen = []
    run = lambda seed, **kw: sample_annealed_mala(  # noqa: E731
        ed, x, sig, generator=torch.Generator().manual_seed(seed), **kw
    )
    a = run(1, corrector_steps=3, callback=seen.append)
    assert ed.calls == 1 + 5 * (1 + 3)
    assert set(seen[0]) == {"i", "sigma", "sigma_next", "x", "denoised", "accept"}
    assert seen[0]["accept"].shape == (5,) and seen[-1]["accept"] is None
    assert torch.equal(a, run(1, corrector_steps=3)) and not torch.equal(a, run(2))
    assert bool(torch.isfinite(a).all()) and a.shape == x.shape
    ed.calls = 0
    frozen = run(1, corrector_steps=1, callback=lambda info: info["x"].clone())
    assert ed.calls == 1 + 5 * (1 + 1) + 5  # x replaced: each later predictor evaluates again
    torch.testing.assert_close(frozen, run(1, corrector_steps=1))
    for kw in ({"eta": 1.0}, {"metropolis": False}, {"corrector_steps": 0}):
        assert bool(torch.isfinite(run(3, **kw)).all())
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is never used
    with pytest.raises(ValueError, match="step_scale"):
        run(1, step_scale=0.0)


# --- training --------------------------------------------------------------------------------


def test_trained_energy_mlp_learns_gaussian_denoiser(one_thread) -> None:
    """A small energy MLP trained with the ordinary denoising loss on N(0, c^2 I) data (2-D)
    approaches the closed-form denoiser c^2 / (c^2 + sigma^2) x: its error is under a fifth of
    the posterior std c sigma / sqrt(c^2 + sigma^2) (observed under a tenth, seeds 0-2)."""
    c = 0.5
    ed = _mlp_energy(hidden=32, sigma_data=c)
    opt = torch.optim.Adam(ed.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    sched = edm()
    for _ in range(300):
        x0 = c * torch.randn(256, 2, generator=g)
        loss = denoising_loss(ed, x0, sched, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = c * torch.randn(512, 2, generator=g)
    for sigma in (0.1, 0.3, 1.0):
        xs = x + sigma * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            got = ed(xs, sigma)
        exact = c**2 / (c**2 + sigma**2) * xs
        rmse = float((got - exact).pow(2).mean().sqrt())
        assert rmse < 0.2 * c * sigma / math.sqrt(c**2 + sigma**2), (sigma, rmse)
