"""Likelihoods and guidance against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.guidance import classifier_free_guidance, classifier_guidance
from stdiff.diffusion.likelihood import bits_per_dim, log_likelihood
from stdiff.diffusion.ode import solve_rk45
from stdiff.diffusion.samplers import sample
from stdiff.diffusion.schedules import edm


def _points(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rk45_exact_exponential() -> None:
    y, stats = solve_rk45(
        lambda t, y: (-2.0 * y[0],),
        (torch.ones(3, dtype=torch.float64),),
        0.0,
        1.5,
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(
        y[0], torch.full((3,), math.exp(-3.0), dtype=torch.float64), rtol=1e-7, atol=0
    )
    assert stats.accepted > 0 and stats.nfe == 1 + 6 * (stats.accepted + stats.rejected)


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_ode_likelihood_matches_analytic(data: str, request: pytest.FixtureRequest) -> None:
    """Exact-trace ODE log-likelihood within 1 % of log p(x) (and 0.01 nats).

    The N(0, sigma_max^2) prior is off by about |mu| / sigma_max nats, so sigma_max = 1000.
    """
    gm: GaussianMixture = request.getfixturevalue(data)
    x, _ = gm.sample(6, torch.Generator().manual_seed(4))
    ll = log_likelihood(gm, x, sigma_min=1e-3, sigma_max=1000.0, rtol=1e-6, atol=1e-6)
    exact = gm.log_prob(x)
    err = (ll.log_prob - exact).abs()
    assert bool((err <= 0.01 * exact.abs()).all()), (ll.log_prob, exact)
    assert bool((err < 0.01).all()), (ll.log_prob, exact)
    torch.testing.assert_close(ll.prior_log_prob + ll.delta, ll.log_prob)
    assert ll.nfe > 10


def test_hutchinson_is_unbiased(mixture: GaussianMixture) -> None:
    """Averaged over 512 Rademacher probes, Hutchinson's estimate matches the exact trace."""
    x0 = _points(1, 2) + mixture.means[0]
    x = x0.expand(512, 2).clone()
    ll = log_likelihood(
        mixture, x, trace="hutchinson", sigma_max=1000.0, generator=torch.Generator().manual_seed(1)
    )
    exact = float(mixture.log_prob(x0)[0])
    assert abs(float(ll.log_prob.mean()) - exact) < 0.01 * abs(exact) + 0.02
    assert float(ll.log_prob.std()) > 0  # the probes really differ


def test_bits_per_dim() -> None:
    lp = torch.tensor([-100.0])
    torch.testing.assert_close(bits_per_dim(lp, 10), torch.tensor([10.0 / math.log(2)]))
    # pixels in [0, 256) scaled by 2/256: log p(data) = log p(x) + D log(2/256)
    expect = -(-100.0 + 10 * math.log(2 / 256)) / (10 * math.log(2))
    torch.testing.assert_close(bits_per_dim(lp, 10, 2 / 256), torch.tensor([expect]))
    with pytest.raises(ValueError, match="choose one of"):
        log_likelihood(lambda x, s, c: x, _points(), trace="skilling")  # type: ignore[arg-type]


def _guided_closed_form(
    gm: GaussianMixture, x: torch.Tensor, sigma: float, y: torch.Tensor, w: float
):
    """x + sigma^2 grad [w log p(x|y) + (1 - w) log p(x)], by autograd on the log-densities."""
    xg = x.clone().requires_grad_(True)
    comp = gm.component_log_prob(xg, sigma).gather(1, y[:, None]).squeeze(1)
    total = w * comp + (1 - w) * gm.log_prob(xg, sigma)
    (grad,) = torch.autograd.grad(total.sum(), xg)
    return x + sigma**2 * grad


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_scale_one_is_conditional(mixture: GaussianMixture, batched: bool) -> None:
    x, y = _points(8) * 2, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    s = torch.full((8,), 0.7, dtype=torch.float64)
    cond = Condition(labels=y)
    torch.testing.assert_close(
        classifier_free_guidance(mixture, 1.0, batched=batched)(x, s, cond), mixture(x, s, cond)
    )
    torch.testing.assert_close(
        classifier_free_guidance(mixture, 0.0, batched=batched)(x, s, cond), mixture(x, s, None)
    )


@pytest.mark.parametrize("w", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("sigma", [0.3, 1.5])
def test_cfg_matches_closed_form(mixture: GaussianMixture, w: float, sigma: float) -> None:
    x, y = _points(8, 3) * 2, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    s = torch.full((8,), sigma, dtype=torch.float64)
    got = classifier_free_guidance(mixture, w)(x, s, Condition(labels=y))
    torch.testing.assert_close(
        got, _guided_closed_form(mixture, x, sigma, y, w), rtol=1e-8, atol=1e-8
    )


def test_cfg_rescale_matches_conditional_std(mixture: GaussianMixture) -> None:
    x, y = _points(4, 5).reshape(2, 4) * 2, torch.tensor([0, 2])
    s = torch.full((2,), 0.5, dtype=torch.float64)

    def d(x, s, c):
        return mixture(
            x.reshape(-1, 2),
            s.repeat_interleave(2),
            None
            if c is None
            else Condition(
                labels=c.labels.repeat_interleave(2),
                drop=None if c.drop is None else c.drop.repeat_interleave(2),
            ),
        ).reshape(-1, 4)

    cond = Condition(labels=y)
    out = classifier_free_guidance(d, 3.0, rescale=1.0)(x, s, cond)
    torch.testing.assert_close(out.std(dim=1), d(x, s, cond).std(dim=1))
    with pytest.raises(ValueError, match="rescale"):
        classifier_free_guidance(d, 3.0, rescale=1.5)


def test_classifier_guidance_exact_classifier_is_conditional(mixture: GaussianMixture) -> None:
    """grad log p(x) + grad log p(y|x) = grad log p(x|y): scale 1 with the exact classifier."""
    x, y = _points(6, 7) * 2, torch.tensor([0, 1, 2, 2, 1, 0])
    s = torch.full((6,), 0.8, dtype=torch.float64)

    def log_prob(xx, ss, cond):
        return mixture.class_log_posterior(xx, ss).gather(1, cond.labels[:, None]).squeeze(1)

    got = classifier_guidance(mixture, log_prob, 1.0)(x, s, Condition(labels=y))
    torch.testing.assert_close(got, mixture(x, s, Condition(labels=y)), rtol=1e-8, atol=1e-8)
    got2 = classifier_guidance(mixture, log_prob, 3.0)(x, s, Condition(labels=y))
    torch.testing.assert_close(
        got2, _guided_closed_form(mixture, x, 0.8, y, 3.0), rtol=1e-8, atol=1e-8
    )


def test_guided_sampling_raises_class_confidence(mixture: GaussianMixture) -> None:
    """CFG w=3 through a sampler: the exact classifier is more confident in the class than at w=1."""
    n = 4000
    cond = Condition(labels=torch.full((n,), 2, dtype=torch.long))
    conf = {}
    for w in (1.0, 3.0):
        x = sample(
            classifier_free_guidance(mixture, w),
            (n, 2),
            edm().discretize(32),
            cond,
            sampler="heun",
            dtype=torch.float64,
        )
        conf[w] = float(mixture.class_log_posterior(x, 0.0)[:, 2].exp().mean())
    assert conf[3.0] > conf[1.0] > 0.9
