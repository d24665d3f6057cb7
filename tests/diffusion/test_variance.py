"""IDDPM learned variances against exact answers.

* normal_kl: closed forms and a Monte-Carlo estimate; the discretised decoder's 256 bin
  probabilities sum to 1 and interior bins are CDF differences.
* q(x_s | x_t, x0): brute-force Bayes on a grid (prior q(x_s | x0) times likelihood q(x_t | x_s)).
* sample_iddpm(variance="small") is sample_ddim(eta=1); learned with frac = 0 / 1 is small / large.
* Gaussian data x0 ~ N(0, c^2) in 1-D: everything is Gaussian, so the exact denoiser and the exact
  reverse variance Var(x_s | x_t) are known (here from Schur complements of the joint covariance
  of (x0, x_s, x_t), independently of the module's formulas). The expected VLB of each variance
  choice is then closed-form (see ``_expected_vlb``) and the module's Monte-Carlo estimate must
  match it; with the optimal learned variance the model's reverse conditionals *are* the true ones,
  so -ELBO = -log p(x0) + KL(q(x_T) || N(0, 1)) exactly at every step count, while the fixed
  variances are looser and approach the exact NLL as the number of steps grows.
* hybrid_loss: the VLB part sends no gradient to the mean channels, vlb_weight=0 is
  denoising_loss, and the VLB part equals T * (per-dim mean VLB term in bits) for the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.samplers import ancestral_step, sample_ddim
from stdiff.diffusion.schedules import csdi_quad, vp_cosine
from stdiff.diffusion.variance import (
    VarianceDenoiser,
    ddpm_step,
    discretized_gaussian_log_likelihood,
    from_vp,
    hybrid_loss,
    learned_log_variance,
    log_variance_bounds,
    normal_kl,
    prior_kl,
    q_posterior,
    sample_iddpm,
    to_vp,
    vlb_bits_per_dim,
    vlb_terms,
)

F64 = torch.float64
VARIANCES = ("learned", "large", "small")  # "learned" first: the others are compared with it
EPS_VP = Preconditioning("eps", sigma_data=1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# densities


def test_normal_kl_closed_forms_and_monte_carlo() -> None:
    z = torch.zeros(3, dtype=F64)
    assert torch.allclose(normal_kl(z, z, z, z), z)
    mu = torch.tensor([0.5, -2.0, 3.0], dtype=F64)
    torch.testing.assert_close(normal_kl(mu, z, z, z), mu**2 / 2)  # KL(N(mu,1) || N(0,1))
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(2.0)
    x = m1 + math.exp(lv1 / 2) * torch.randn(400_000, generator=_gen(0), dtype=F64)
    p1 = -0.5 * (x - m1) ** 2 / math.exp(lv1) - lv1 / 2  # log densities up to the same constant
    p2 = -0.5 * (x - m2) ** 2 / math.exp(lv2) - lv2 / 2
    est, se = (p1 - p2).mean(), (p1 - p2).std() / math.sqrt(len(x))
    got = normal_kl(*(torch.tensor(a, dtype=F64) for a in (m1, lv1, m2, lv2)))
    assert abs(got - est) < 5 * se, (float(got), float(est), float(se))


@pytest.mark.parametrize(
    ("mean", "log_scale"),
    [
        (0.0, math.log(0.1)),
        (0.37, math.log(1e-3)),
        (-1.5, 0.0),
        (2.0, math.log(30.0)),
        (0.9, -12.0),
    ],
)
def test_discretized_likelihood_sums_to_one(mean: float, log_scale: float) -> None:
    centres = torch.linspace(-1, 1, 256, dtype=F64)
    m, ls = torch.full_like(centres, mean), torch.full_like(centres, log_scale)
    logp = discretized_gaussian_log_likelihood(centres, m, ls)
    assert bool(torch.isfinite(logp).all())
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
    # interior bins are CDF differences over [x - 1/255, x + 1/255]
    mid, scale = centres[100:110], math.exp(log_scale)
    ref = torch.special.ndtr((mid - mean + 1 / 255) / scale) - torch.special.ndtr(
        (mid - mean - 1 / 255) / scale
    )
    torch.testing.assert_close(logp[100:110].exp(), ref, rtol=1e-9, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# step algebra


def test_step_betas_reproduce_the_schedule() -> None:
    """Consecutive levels of the table give back the schedule's own betas (first step: sigma_s=0)."""
    sch = vp_cosine(T=200)
    tab = sch.sigmas_table
    st = ddpm_step(tab, torch.cat([torch.zeros(1, dtype=F64), tab[:-1]]))
    torch.testing.assert_close(st.beta, sch.betas, rtol=1e-9, atol=0)
    # respacing (IDDPM): 1 - prod(1 - beta) over the skipped steps
    i, j = 150, 40
    torch.testing.assert_close(
        ddpm_step(tab[i], tab[j]).beta,
        1 - torch.prod(1 - sch.betas[j + 1 : i + 1]),
        rtol=1e-9,
        atol=0,
    )


@pytest.mark.parametrize(
    ("sigma_t", "sigma_s"), [(0.1, 0.09), (1.3, 0.2), (50.0, 3.0), (4.0, 0.01)]
)
def test_posterior_is_brute_force_bayes(sigma_t: float, sigma_s: float) -> None:
    """q(x_s | x_t, x0) ∝ q(x_s | x0) q(x_t | x_s) evaluated on a fine grid (VP coordinates)."""
    ab_t, ab_s = 1 / (1 + sigma_t**2), 1 / (1 + sigma_s**2)
    alpha = ab_t / ab_s
    xt = math.sqrt(ab_t) * 0.7 - 1.3 * math.sqrt(1 - ab_t)  # a typical x_t (VP) for x0 = 0.7
    x0, x_t = torch.tensor([[0.7]], dtype=F64), torch.tensor([[xt]], dtype=F64)
    prior_sd = math.sqrt(1 - ab_s)
    grid = math.sqrt(ab_s) * 0.7 + prior_sd * torch.linspace(-12, 12, 400_001, dtype=F64)
    # log q(x_s | x0) + log q(x_t | x_s) up to constants (written out: torch.distributions would
    # turn the Python-float parameters into float32)
    logw = -0.5 * ((grid - math.sqrt(ab_s) * 0.7) / prior_sd) ** 2 - 0.5 * (
        xt - math.sqrt(alpha) * grid
    ) ** 2 / (1 - alpha)
    w = torch.softmax(logw, 0)
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()
    got_mean, got_var = q_posterior(x0, x_t, sigma_t, sigma_s)
    torch.testing.assert_close(got_mean.reshape(()), mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got_var.reshape(()), var, rtol=1e-6, atol=0)
    # in sigma coordinates this is the ancestral step of diffusion.samplers (DDIM eta=1)
    x_sig = from_vp(x_t, sigma_t)
    torch.testing.assert_close(to_vp(x_sig, sigma_t), x_t)
    mean_sig = from_vp(got_mean, sigma_s)
    torch.testing.assert_close(mean_sig, x0 + sigma_s**2 / sigma_t**2 * (x_sig - x0))
    _, up = ancestral_step(sigma_t, sigma_s, 1.0)
    torch.testing.assert_close(float(got_var) * (1 + sigma_s**2), up**2, rtol=1e-12, atol=0)


def test_learned_log_variance_interpolates() -> None:
    st, ss, above = 2.0, 1.0, 5.0
    step = ddpm_step(st, ss)
    v = torch.tensor([[-1.0], [1.0], [0.0]], dtype=F64)
    lv = learned_log_variance(v, st, ss).reshape(-1)
    torch.testing.assert_close(lv[0], step.beta_tilde.log())
    torch.testing.assert_close(lv[1], step.beta.log())
    torch.testing.assert_close(lv[2], (step.beta.log() + step.beta_tilde.log()) / 2)
    # the decoder step (sigma_s = 0): beta_tilde is that of the step above (IDDPM's clipping)
    lo, hi = log_variance_bounds(st, 0.0, above)
    torch.testing.assert_close(lo, ddpm_step(above, st).beta_tilde.log())
    torch.testing.assert_close(hi, torch.tensor(1 / (1 + 1 / st**2), dtype=F64).log())
    lo_inf, _ = log_variance_bounds(st, 0.0)
    torch.testing.assert_close(lo_inf, hi)  # unknown step above: beta_tilde -> beta


# ------------------------------------------------------------------------------------------------
# sampling


class MixtureEpsNet(nn.Module):
    """Exact eps prediction of a GaussianMixture under EPS_VP (log-sigma conditioning), plus a
    constant variance channel ``v``."""

    def __init__(self, gm: GaussianMixture, v: float = 0.0) -> None:
        super().__init__()
        self.gm, self.v = gm, v

    def forward(self, x_in, c_noise, cond):
        sigma = torch.exp(4 * c_noise)[:, None]  # (B, 1)
        x = x_in * (sigma**2 + 1).sqrt()
        eps = (x - self.gm.denoise(x, sigma.reshape(-1))) / sigma
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


def _mixture() -> GaussianMixture:
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]], dtype=F64)
    covs = torch.tensor([[0.3, 0.2], [0.1, 0.5], [0.4, 0.05]], dtype=F64)
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


def test_small_variance_is_ddim_eta_1() -> None:
    gm = _mixture()
    sigmas = vp_cosine().discretize(25)
    x = torch.randn(64, 2, generator=_gen(3), dtype=F64) * float(sigmas[0])
    ref = sample_ddim(gm, x, sigmas, generator=_gen(7), eta=1.0)
    got = sample_iddpm(gm, x, sigmas, generator=_gen(7), variance="small")
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    # a learned variance output v = -1 (frac = 0) is beta_tilde, v = +1 is beta
    den = VarianceDenoiser(MixtureEpsNet(gm, v=-1.0), EPS_VP)
    got = sample_iddpm(den, x, sigmas, generator=_gen(7), variance="learned")
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    large = sample_iddpm(gm, x, sigmas, generator=_gen(7), variance="large")
    den = VarianceDenoiser(MixtureEpsNet(gm, v=1.0), EPS_VP)
    got = sample_iddpm(den, x, sigmas, generator=_gen(7), variance="learned")
    torch.testing.assert_close(got, large, rtol=0, atol=1e-10)
    assert not torch.allclose(large, ref)
    # same callback contract as the other samplers
    seen: list[tuple[int, float, float]] = []

    def cb(info):
        seen.append((info["i"], info["sigma"], info["sigma_next"]))
        return torch.zeros_like(info["x"]) if info["i"] == len(sigmas) - 2 else None

    out = sample_iddpm(gm, x, sigmas, generator=_gen(7), variance="small", callback=cb)
    assert [s[0] for s in seen] == list(range(len(sigmas) - 1))
    assert seen[0][1] == float(sigmas[0]) and seen[-1][2] == 0.0
    assert bool((out == 0).all())


def test_learned_needs_a_variance_denoiser() -> None:
    gm = _mixture()
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="VarianceDenoiser"):
        sample_iddpm(gm, x, [1.0, 0.0], variance="learned")
    with pytest.raises(ValueError, match="VarianceDenoiser"):
        vlb_terms(Denoiser(MixtureEpsNet(gm), EPS_VP), x, 1.0, 0.5)
    with pytest.raises(ValueError, match="variance"):
        sample_iddpm(gm, x, [1.0, 0.0], variance="medium")


# ------------------------------------------------------------------------------------------------
# Gaussian data: the exact VLB


def _joint_cov(st: float, ss: float, c: float) -> torch.Tensor:
    """Covariance of (x0, x_s, x_t) in VP coordinates, built from the forward process
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) n1,  x_t = sqrt(alpha) x_s + sqrt(1 - alpha) n2."""
    ab_t, ab_s = 1 / (1 + st**2), 1 / (1 + ss**2)
    al = ab_t / ab_s
    a = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [math.sqrt(ab_s), math.sqrt(1 - ab_s), 0.0],
            [math.sqrt(al * ab_s), math.sqrt(al * (1 - ab_s)), math.sqrt(1 - al)],
        ],
        dtype=F64,
    )
    return a @ torch.diag(torch.tensor([c * c, 1.0, 1.0], dtype=F64)) @ a.T


def _cond_var(cov: torch.Tensor, i: int, given: list[int]) -> float:
    b = cov[i, given]
    return float(cov[i, i] - b @ torch.linalg.solve(cov[given][:, given], b))


def _step_variances(grid: list[float], i: int, c: float) -> dict[str, float]:
    """VP variances of step i (grid[i] -> grid[i+1]): the true posterior Var(x_s|x_t,x0), the
    optimal Var(x_s|x_t), beta; at the decoder (grid[i+1] = 0) x_s is x0 and 'small' is the
    posterior variance of the step above."""
    st, ss = grid[i], grid[i + 1]
    beta = 1 - (1 + ss**2) / (1 + st**2)
    if ss > 0:
        cov = _joint_cov(st, ss, c)
        q = _cond_var(cov, 1, [0, 2])
        return {"q": q, "learned": _cond_var(cov, 1, [2]), "large": beta, "small": q}
    opt = _cond_var(_joint_cov(st, 1e-12, c), 0, [2])  # Var(x0 | x_t)
    small = _cond_var(_joint_cov(grid[i - 1], st, c), 1, [0, 2]) if i > 0 else beta
    return {"q": 0.0, "learned": opt, "large": beta, "small": small}


def _expected_vlb(grid: list[float], c: float, variance: str) -> float:
    """E[-ELBO] in nats for x0 ~ N(0, c^2), the exact mean and a Gaussian decoder.

    Step: E KL(N(mu_q, q) || N(mu_p, p)) = (log(p/q) + opt/p - 1) / 2, as E (mu_q - mu_p)^2 =
    Var E[x_s|x_t,x0] given x_t = opt - q. Decoder: E[-log N(x0; E[x0|x_t], p)] = log(2 pi p)/2
    + opt / (2p). Prior: E KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)).
    """
    ab = 1 / (1 + grid[0] ** 2)
    total = 0.5 * (ab * (c * c - 1) - math.log(1 - ab))
    for i in range(len(grid) - 1):
        v = _step_variances(grid, i, c)
        p, opt = v[variance], v["learned"]
        if grid[i + 1] > 0:
            total += 0.5 * (math.log(p / v["q"]) + opt / p - 1)
        else:
            total += 0.5 * math.log(2 * math.pi * p) + 0.5 * opt / p
    return total


class GaussianOptimalNet(nn.Module):
    """Exact eps for x0 ~ N(0, c^2) and the v that makes Sigma_t the true Var(x_s | x_t) on ``grid``
    (the net, like IDDPM's, is tied to the step grid it is used on)."""

    def __init__(self, grid: torch.Tensor, c: float) -> None:
        super().__init__()
        g = [float(s) for s in grid]
        self.c, self.log_levels = c, torch.tensor(g[:-1], dtype=F64).log()
        vs = []
        for i in range(len(g) - 1):
            above = g[i - 1] if i > 0 else math.inf
            lo, hi = log_variance_bounds(g[i], g[i + 1], above)
            target = math.log(_step_variances(g, i, c)["learned"])
            vs.append(2 * (target - float(lo)) / float(hi - lo) - 1)
        self.v = torch.tensor(vs, dtype=F64)

    def forward(self, x_in, c_noise, cond):
        log_sigma = 4 * c_noise  # (B,)
        asc = self.log_levels.flip(0)  # nearest grid level (B,), without a (B, n) matrix
        hi = torch.searchsorted(asc, log_sigma).clamp(1, len(asc) - 1)
        j = torch.where((log_sigma - asc[hi - 1]).abs() < (asc[hi] - log_sigma).abs(), hi - 1, hi)
        idx = len(asc) - 1 - j
        sigma = log_sigma.exp()[:, None]
        x = x_in * (sigma**2 + 1).sqrt()
        x0_hat = self.c**2 / (self.c**2 + sigma**2) * x
        eps = (x - x0_hat) / sigma
        return torch.cat([eps, self.v[idx][:, None].expand_as(eps)], dim=1)


def test_gaussian_vlb_is_exact_and_learned_variance_is_tight() -> None:
    c, b = 0.5, 20_000
    sch = vp_cosine(T=256)
    x0 = c * torch.randn(b, 1, generator=_gen(11), dtype=F64)
    nll = 0.5 * math.log(2 * math.pi * c * c) + 0.5 * x0[:, 0] ** 2 / c**2  # exact -log p(x0)
    nll_mean = 0.5 * math.log(2 * math.pi * c * c) + 0.5
    # Monte-Carlo runs of the module (the 256-step "small" run is left out to save time)
    runs = {4: VARIANCES, 16: VARIANCES, 64: VARIANCES, 256: ("learned", "large")}
    gaps: dict[str, list[float]] = {v: [] for v in VARIANCES}  # exact E[-ELBO] - E[-log p]
    for n, variances in runs.items():
        grid = sch.discretize(n, "linspace")  # every grid ends at the same smallest level
        g = [float(s) for s in grid]
        for var in VARIANCES:
            gaps[var].append(_expected_vlb(g, c, var) - nll_mean)
        # learned optimal variance: -ELBO = -log p(x0) + KL(q(x_T) || N(0, 1)), any step count
        vt = (1 + g[0] ** 2) ** -1 * (c * c - 1) + 1  # Var q(x_T) in VP coordinates
        assert gaps["learned"][-1] == pytest.approx(0.5 * (vt - 1 - math.log(vt)), abs=1e-9)
        den = VarianceDenoiser(GaussianOptimalNet(grid, c), EPS_VP)
        nats = {}
        for var in variances:
            bpd = vlb_bits_per_dim(
                den, x0, None, sigmas=grid, variance=var, decoder="gaussian", generator=_gen(5)
            )
            nats[var] = bpd * math.log(2)  # one dimension
            gap = nats[var] - nll  # per-sample gap (the -log p(x0) fluctuation removed)
            se = float(gap.std()) / math.sqrt(b)
            assert abs(float(gap.mean()) - gaps[var][-1]) < 5 * se + 1e-9, (n, var, gap.mean())
        # same draws for every variance choice (common random numbers): the optimum wins
        for var in variances[1:]:
            diff = nats[var] - nats["learned"]
            expect = gaps[var][-1] - gaps["learned"][-1]
            assert expect > 0
            assert abs(float(diff.mean()) - expect) < 5 * float(diff.std()) / math.sqrt(b) + 1e-9
    # fixed variances tighten towards the exact NLL as steps grow (continuum limit); the learned
    # optimum is exact (up to the ~1e-10 prior mismatch at sigma_max) at every step count
    for var in ("large", "small"):
        assert all(a > b > 0 for a, b in zip(gaps[var], gaps[var][1:], strict=False)), gaps
    assert gaps["large"][0] > 0.1 and gaps["large"][-1] < 3e-3
    assert gaps["small"][0] > 100 and gaps["small"][-1] < 1  # beta_tilde: far worse at few steps
    assert max(abs(x) for x in gaps["learned"]) < 1e-9


def test_default_grid_is_the_full_schedule() -> None:
    sch = csdi_quad()  # T = 50
    x0 = torch.rand(6, 3, generator=_gen(2), dtype=F64) * 2 - 1
    net = GaussianOptimalNet(torch.cat([sch.sigmas_table.flip(0), torch.zeros(1, dtype=F64)]), 0.5)
    den = VarianceDenoiser(net, EPS_VP)
    full = torch.cat([sch.sigmas_table.flip(0), torch.zeros(1, dtype=F64)])
    a = vlb_bits_per_dim(den, x0, sch, generator=_gen(1))
    b = vlb_bits_per_dim(den, x0, sch, sigmas=full, generator=_gen(1))
    assert a.shape == (6,) and bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # units: the prior KL plus every step's term (nats, summed over the 3 dims) / (3 ln 2)
    g, sig = _gen(1), [float(s) for s in full]
    nats = prior_kl(x0, sig[0])
    for i in range(len(sig) - 1):
        above = sig[i - 1] if i > 0 else math.inf
        nats = nats + vlb_terms(den, x0, sig[i], sig[i + 1], sigma_above=above, generator=g)
    torch.testing.assert_close(a, nats / (3 * math.log(2)), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------
# hybrid loss


class LinearNet(nn.Module):
    """``(B, C) -> (B, 2C)``: a linear map of ``[x_in, c_noise]``; keeps its last output."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(c + 1, 2 * c, dtype=F64)
        with torch.no_grad():
            g = _gen(4)
            self.lin.weight.copy_(0.3 * torch.randn(2 * c, c + 1, generator=g, dtype=F64))
            self.lin.bias.copy_(0.1 * torch.randn(2 * c, generator=g, dtype=F64))
        self.out: torch.Tensor | None = None

    def forward(self, x_in, c_noise, cond):
        self.out = self.lin(torch.cat([x_in, c_noise[:, None]], dim=1))
        if self.out.requires_grad:
            self.out.retain_grad()
        return self.out


def _hybrid_setup(b: int = 32, c: int = 3):
    sch = vp_cosine(T=50)
    den = VarianceDenoiser(LinearNet(c), Preconditioning("eps", 1.0, "timestep"), sch)
    x0 = torch.rand(b, c, generator=_gen(9), dtype=F64) * 2 - 1
    return sch, den, x0


def test_hybrid_without_vlb_is_denoising_loss() -> None:
    sch, den, x0 = _hybrid_setup()
    ref = denoising_loss(den, x0, sch, generator=_gen(3))
    got = hybrid_loss(den, x0, sch, vlb_weight=0.0, generator=_gen(3))
    assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="VarianceDenoiser"):
        hybrid_loss(Denoiser(den.net, den.precond, sch), x0, sch)


def test_hybrid_vlb_trains_only_the_variance() -> None:
    sch, den, x0 = _hybrid_setup()
    c = x0.shape[1]
    grads, out_grads = {}, {}
    for w in (0.0, 1.0):
        den.zero_grad()
        hybrid_loss(den, x0, sch, vlb_weight=w, generator=_gen(3)).backward()
        grads[w] = den.net.lin.weight.grad.clone(), den.net.lin.bias.grad.clone()
        out_grads[w] = den.net.out.grad.clone()
    # mean rows/channels: identical gradients with and without the VLB (stop-gradient)
    torch.testing.assert_close(grads[1.0][0][:c], grads[0.0][0][:c], rtol=1e-12, atol=0)
    torch.testing.assert_close(out_grads[1.0][:, :c], out_grads[0.0][:, :c], rtol=1e-12, atol=0)
    # variance rows/channels: only the VLB trains them
    assert bool((grads[0.0][0][c:] == 0).all()) and bool((out_grads[0.0][:, c:] == 0).all())
    assert float(grads[1.0][0][c:].abs().min()) > 0 and float(out_grads[1.0][:, c:].abs().min()) > 0


def test_hybrid_vlb_term_is_T_times_the_per_dim_vlb_in_bits() -> None:
    sch, den, x0 = _hybrid_setup(b=64)
    b, d, t = x0.shape[0], x0.shape[1], sch.num_timesteps
    # the draws of denoising_loss: a uniform step, then the noise
    g = _gen(8)
    sigma = sch.sample_training_sigma(b, g).double()
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    k = sch.timestep(sigma).round().long()
    assert bool((k == 0).any()) and bool((k > 0).any())  # both decoder and KL terms occur
    tab = sch.sigmas_table
    s_s = torch.where(k > 0, tab[(k - 1).clamp(min=0)], 0.0)
    above = tab[(k + 1).clamp(max=t - 1)]
    with torch.no_grad():
        terms = vlb_terms(den, x0, sigma, s_s, sigma_above=above, noise=noise)  # (B,) nats
        mse = hybrid_loss(den, x0, sch, vlb_weight=0.0, generator=_gen(8))
        got = hybrid_loss(den, x0, sch, vlb_weight=0.01, generator=_gen(8)) - mse
        expect = 0.01 * t * terms.mean() / (d * math.log(2))
        torch.testing.assert_close(got, expect, rtol=1e-6, atol=0)
        # a mask that keeps whole samples averages over those samples only
        keep = torch.arange(b) % 3 == 0
        mask = keep[:, None].expand_as(x0).to(F64)
        mse = hybrid_loss(den, x0, sch, mask=mask, vlb_weight=0.0, generator=_gen(8))
        got = hybrid_loss(den, x0, sch, mask=mask, vlb_weight=0.01, generator=_gen(8)) - mse
        expect = 0.01 * t * terms[keep].mean() / (d * math.log(2))
        torch.testing.assert_close(got, expect, rtol=1e-6, atol=0)
