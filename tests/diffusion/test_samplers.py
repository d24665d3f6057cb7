"""Samplers against exact answers.

Moments: 20,000 samples (float64) with the exact denoiser of a Gaussian and of a 3-component
mixture. Each mean and covariance entry must lie within 5 Monte-Carlo standard errors (estimated
from 400,000 exact samples; about 0.005 for the Gaussian's covariance, 0.03 for the mixture's)
plus a discretisation allowance of 1 % (mean, of the largest std) or 2 % (covariance, of the
largest variance) at the stated step counts.

Order: deterministic samplers integrate the probability-flow ODE of the mixture from sigma = 10
to sigma = 0.02 (no final denoising step); the error against a Dormand-Prince solution at
rtol = 1e-10 is fitted as err ~ C N^-p over N = 16..128 steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import (
    SAMPLERS,
    check_options,
    get_sampler,
    sample,
    sample_pf_ode,
    steps_for_evals,
)
from stdiff.diffusion.schedules import SCHEDULES, edm, make_schedule, vp_linear

N_SAMPLES = 20_000
STEPS = {
    "ddim": 256,
    "euler": 256,
    "heun": 32,
    "dpmpp_2m": 32,
    "dpmpp_2m_sde": 128,
    "dpmpp_2s": 32,
    "pf_ode": 2,
    "ddpm": 512,
    "euler_maruyama": 1024,
    "pc": 512,
    "consistency": 1,
    "mala": 32,
    "iddpm": 512,
}
# samplers that are exact only for a particular kind of model, tested with it elsewhere
SPECIAL = {
    "consistency": "exact for a consistency function: test_distill and test_consistency_sampler",
    "mala": "needs an energy model: test_energy",
    "iddpm": "learned variances need a VarianceDenoiser: test_variance (small = ddpm exactly)",
}


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), torch.cov(x.T)


def _assert_moments(x: torch.Tensor, gm: GaussianMixture, labels=None, what: str = "") -> None:
    """Sample moments of ``x`` within 5 Monte-Carlo standard errors (+ bias allowance) of ``gm``'s.

    With ``labels`` the reference is the conditional distribution of those component labels.
    """
    n = x.shape[0]
    g = torch.Generator().manual_seed(123)
    ref_labels = None if labels is None else labels[:1].expand(400_000)
    ref, _ = gm.sample(400_000, g, labels=ref_labels)  # only for the standard errors
    if labels is None:
        mean, cov = gm.mean(), gm.covariance()  # exact
    else:
        mean, cov = gm.means[labels[0]], gm.covs[labels[0]]
    c = ref - ref.mean(0)
    se_mean = (c.var(0) / n).sqrt()
    se_cov = ((c[:, :, None] * c[:, None, :]).var(0) / n).sqrt()
    tol_mean = 5 * se_mean + 0.01 * cov.diagonal().max().sqrt()
    tol_cov = 5 * se_cov + 0.02 * cov.diagonal().max()
    got_mean, got_cov = _moments(x)
    assert bool(((got_mean - mean).abs() <= tol_mean).all()), f"{what}: mean {got_mean} vs {mean}"
    assert bool(((got_cov - cov).abs() <= tol_cov).all()), f"{what}: cov {got_cov} vs {cov}"


def test_every_sampler_has_a_step_count() -> None:
    assert set(STEPS) == set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_moments_match_exact(name: str, data: str, request: pytest.FixtureRequest) -> None:
    if name in SPECIAL:
        pytest.skip(SPECIAL[name])
    gm: GaussianMixture = request.getfixturevalue(data)
    g = torch.Generator().manual_seed(11)
    sig = edm().discretize(STEPS[name])
    x = sample(gm, (N_SAMPLES, 2), sig, sampler=name, generator=g, dtype=torch.float64)
    _assert_moments(x, gm, what=name)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_ddpm_schedule_all_timesteps(name: str, gaussian: GaussianMixture) -> None:
    """The DDPM linear schedule (T = 1000, trailing) reaches the same answer."""
    n = 1000 if name == "ddpm" else 100
    x = sample(
        gaussian,
        (N_SAMPLES, 2),
        vp_linear().discretize(n),
        sampler=name,
        generator=torch.Generator().manual_seed(5),
        dtype=torch.float64,
    )
    _assert_moments(x, gaussian, what=name)


def _order(name: str, mixture: GaussianMixture) -> float:
    x_init = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_init = x_init * 10.0
    ref = sample_pf_ode(mixture, x_init, [10.0, 0.02], rtol=1e-10, atol=1e-10)
    ns = [16, 32, 64, 128]
    errs = []
    for n in ns:
        sig = make_schedule("edm", sigma_min=0.02, sigma_max=10.0).discretize(n)[:-1]
        x = get_sampler(name).fn(mixture, x_init.clone(), sig)
        errs.append(float((x - ref).norm(dim=1).mean()))
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    return -float(slope)


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("euler", 0.8, 1.3), ("ddim", 0.8, 1.3), ("heun", 1.7, 2.6), ("dpmpp_2m", 1.7, 2.6)],
)
def test_convergence_order(name: str, lo: float, hi: float, mixture: GaussianMixture) -> None:
    p = _order(name, mixture)
    assert lo <= p <= hi, f"{name}: fitted order {p:.2f} not in [{lo}, {hi}]"


def _variance_error(name: str, steps: int, c: float = 0.5, n: int = 400_000) -> float:
    """Relative error of the sample variance for data N(0, c^2) with its exact denoiser."""

    def den(x, s, cond=None):
        return c**2 / (c**2 + s.to(x.dtype).view(-1, 1) ** 2) * x

    g = torch.Generator().manual_seed(steps)
    x = sample(den, (n, 1), edm().discretize(steps), sampler=name, generator=g, dtype=torch.float64)
    return abs(float(x.var()) / c**2 - 1)


def test_sde_dpm_solver_has_weak_order_two() -> None:
    """SDE-DPM-Solver++(2M)'s variance error falls as N^-2, DDPM's (its first-order part) as N^-1:
    errors 0.02-0.4, far above the Monte-Carlo standard error of 0.002."""
    ns = [16, 32, 64]
    orders = {}
    for name in ("ddpm", "dpmpp_2m_sde"):
        errs = [_variance_error(name, n) for n in ns]
        orders[name] = -float(np.polyfit(np.log(ns), np.log(errs), 1)[0])
        print(name, [f"{e:.4f}" for e in errs], f"order {orders[name]:.2f}")
    assert 0.6 <= orders["ddpm"] <= 1.3
    assert 1.7 <= orders["dpmpp_2m_sde"] <= 2.6
    assert _variance_error("dpmpp_2m_sde", 64) < _variance_error("ddpm", 64) / 4


def test_pf_ode_matches_closed_form_flow(gaussian: GaussianMixture) -> None:
    """For one Gaussian the PF-ODE map is closed form; RK45 and 64-step Heun reproduce it."""
    x = 10.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gaussian.flow_map(x, 10.0, 0.01)
    ode = sample_pf_ode(gaussian, x, [10.0, 0.01], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ode, exact, atol=1e-6, rtol=0)
    heun = get_sampler("heun").fn(
        gaussian, x, make_schedule("edm", sigma_max=10.0, sigma_min=0.01).discretize(64)[:-1]
    )
    torch.testing.assert_close(heun, exact, atol=5e-3, rtol=0)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_contract_shapes_determinism(schedule: str, name: str) -> None:
    """Every sampler with every schedule: shape kept, finite, same seed -> same samples."""
    if name in ("mala", "iddpm"):
        pytest.skip(SPECIAL[name])
    gm = GaussianMixture(torch.zeros(1, 12), torch.ones(1, 12))
    sig = make_schedule(schedule).discretize(6)
    run = lambda seed: sample(  # noqa: E731
        gm, (5, 3, 2, 2), sig, sampler=name, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (5, 3, 2, 2) and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all())
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["ddpm", "euler_maruyama", "dpmpp_2s", "heun"])
def test_member_generators_batch_independent(name: str, mixture: GaussianMixture) -> None:
    """Member m gets the same sample alone or inside an ensemble batch (one generator each)."""
    sig = edm().discretize(10)
    opts = {"s_churn": 10.0} if name == "heun" else ({"eta": 1.0} if name == "dpmpp_2s" else {})
    batch = sample(mixture, (4, 2), sig, sampler=name, generator=member_generators(7, 4), **opts)
    alone = sample(mixture, (1, 2), sig, sampler=name, generator=member_generators(7, [2]), **opts)
    torch.testing.assert_close(batch[2:3], alone)
    assert not torch.equal(batch[0], batch[1])


def test_condition_reaches_denoiser(mixture: GaussianMixture) -> None:
    """Conditional sampling of component 1 gives that component's mean and covariance."""
    cond = Condition(labels=torch.ones(N_SAMPLES, dtype=torch.long))
    x = sample(
        mixture, (N_SAMPLES, 2), edm().discretize(32), cond, sampler="heun", dtype=torch.float64
    )
    _assert_moments(x, mixture, labels=cond.labels, what="conditional")


def test_steps_for_evals() -> None:
    assert steps_for_evals("euler", 10) == 10
    assert steps_for_evals("heun", 10) == 5  # 2*5 - 1 = 9 evaluations
    assert steps_for_evals("dpmpp_2s", 5) == 3
    with pytest.raises(ValueError, match="adaptive"):
        steps_for_evals("pf_ode", 10)


def test_counted_evaluations(mixture: GaussianMixture) -> None:
    calls = []

    def counting(x, s, c):
        calls.append(1)
        return mixture(x, s, c)

    for name, spec in SAMPLERS.items():
        if spec.evals is None or name in ("mala", "iddpm"):  # tested in their own modules
            continue
        calls.clear()
        sample(counting, (3, 2), edm().discretize(7), sampler=name)
        assert len(calls) == spec.evals(7), name


def test_errors_name_valid_choices(gaussian: GaussianMixture) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        get_sampler("dpm++")
    with pytest.raises(ValueError, match="valid options"):
        check_options("ddim", {"churn": 1.0})
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(gaussian, (2, 2), [1.0, 2.0, 0.0], sampler="euler")
    with pytest.raises(ValueError, match="one per batch element"):
        sample(gaussian, (3, 2), [1.0, 0.0], sampler="ddpm", generator=member_generators(0, 2))
    check_options("heun", {"s_churn": 1.0})
    assert math.isfinite(float(sample(gaussian, (2, 2), [1.0, 0.0], sampler="euler").sum()))


def test_gencast_sampler_with_churn_matches_moments(mixture: GaussianMixture) -> None:
    """GenCast's setting: DPM-Solver++(2S), 20 Karras levels from sigma 80 to 0.03 (rho 7), churn
    2.5 for sigma in [0.75, 80]; with the exact denoiser (and s_noise 1) the moments are exact."""
    sig = edm(sigma_min=0.03, sigma_max=80.0, rho=7.0).discretize(20, "karras")
    opts = {"s_churn": 2.5, "s_tmin": 0.75, "s_tmax": 80.0, "s_noise": 1.0}
    x = sample(mixture, (N_SAMPLES, 2), sig, sampler="dpmpp_2s", dtype=torch.float64,
               generator=torch.Generator().manual_seed(5), **opts)  # fmt: skip
    _assert_moments(x, mixture, what="dpmpp_2s with churn")
    plain = sample(mixture, (4, 2), sig, sampler="dpmpp_2s", generator=torch.Generator())
    churned = sample(mixture, (4, 2), sig, sampler="dpmpp_2s", generator=torch.Generator(), **opts)
    assert not torch.equal(plain, churned)  # churn draws noise


@pytest.mark.parametrize("steps", [1, 3])
def test_consistency_sampler_with_the_exact_consistency_function(
    steps: int, gaussian: GaussianMixture
) -> None:
    """The exact consistency function of a Gaussian is its PF-ODE flow map to sigma ~ 0; one
    or several consistency steps then draw the data distribution."""

    def f(x, sigma, cond=None):
        return gaussian.flow_map(x, float(sigma[0]), 1e-6)

    sig = edm().discretize(steps, "uniform_t")
    x = sample(f, (N_SAMPLES, 2), sig, sampler="consistency", dtype=torch.float64,
               generator=torch.Generator().manual_seed(3))  # fmt: skip
    _assert_moments(x, gaussian, what=f"consistency x {steps}")


def test_mala_refuses_a_model_without_energy(gaussian: GaussianMixture) -> None:
    with pytest.raises(ValueError, match="energy model"):
        sample(gaussian, (4, 2), edm().discretize(4), sampler="mala")
