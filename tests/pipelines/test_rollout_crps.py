"""The autoregressive (rollout) CRPS of a one-evaluation forecast generator
(``tasks.forecast.rollout_crps_loss``): one step is the single-step CRPS exactly, and on a
Gaussian AR(1) process, whose k-step marginals are known, its value is the closed form and its
minimiser is the true process. And the generator's block-constant input noise
(``model.noise_pool``) against a brute-force version."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import crps_loss
from stdiff.diffusion.precond import pool_noise
from stdiff.pipelines.tasks.forecast import WeatherLayout, condition, rollout_crps_loss


def _layout(residual: bool, context: int, channels: int = 1, h: int = 1, w: int = 1):
    return WeatherLayout(
        variables=["air"], channels=[f"air@{i}" for i in range(channels)], mean=[0.0] * channels,
        std=[2.0] * channels, diff_std=[0.5] * channels, lat=list(range(h)), lon=list(range(w)),
        step_hours=6.0, context=context, residual=residual,
    )  # fmt: skip


def test_one_step_rollout_is_the_single_step_crps() -> None:
    """With one step, the rollout loss (targets as states, scored in residual units) is
    ``crps_loss`` on the residual target, to rounding, for the same generator seed."""
    layout = _layout(residual=True, context=2, channels=3, h=4, w=5)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(6, 2, 3, 4, 5, generator=g)
    state = ctx[:, -1] + 0.4 * torch.randn(6, 3, 4, 5, generator=g)
    scal = torch.randn(6, 5, generator=g)
    cond = condition(ctx, layout.static(), scal)
    w = torch.randn(3, layout.context_channels, generator=g)

    def den(x, sigma, c):
        mix = torch.einsum("ok,bkhw->bohw", w, c.context)
        return 0.3 * x / sigma[:, None, None, None] + mix + c.scalars[:, :1, None, None]

    residual = (state - ctx[:, -1]) / layout.scale()
    one = crps_loss(den, residual, 80.0, cond, generator=torch.Generator().manual_seed(5))
    roll = rollout_crps_loss(layout, 80.0)(
        den, den, state[:, None], replace(cond, scalars=scal[:, None]), None,
        torch.Generator().manual_seed(5),
    )  # fmt: skip
    torch.testing.assert_close(roll, one, rtol=1e-5, atol=1e-6)


def test_rollout_crps_recovers_a_gaussian_ar1_process_from_a_collapsed_start() -> None:
    """``x_{k+1} = a x_k + sqrt(q) e``: the generator ``a' x_k + s z`` trained on the 3-step
    rollout CRPS, from the collapsed ``s = 0.05`` and a wrong ``a' = 0.3``, reaches the true
    ``a = 0.8`` and ``s = sqrt(q) = 0.6``. Every step's marginal is matched only there, and the
    later steps' terms reach the parameters through the members' own earlier states."""
    a, sq, steps, sigma = 0.8, 0.6, 3, 80.0
    layout = _layout(residual=False, context=1)
    params = torch.nn.Parameter(torch.tensor([0.3, 0.05]))

    def den(x, s, c):
        return params[0] * c.context[:, :1] + params[1] * x / sigma

    loss_fn = rollout_crps_loss(layout, sigma)
    opt = torch.optim.Adam([params], lr=0.02)
    g = torch.Generator().manual_seed(1)
    for it in range(700):
        start = torch.randn(1024, 1, 1, 1, generator=g)  # stationary: var q / (1 - a^2) = 1
        x0 = _ar1(start, a, sq, steps, g)
        cond = Condition(context=torch.cat([start, torch.zeros(1024, 4, 1, 1)], 1),
                         scalars=torch.zeros(1024, steps, 5))  # fmt: skip
        for group in opt.param_groups:
            group["lr"] = 0.02 * 0.5 * (1 + math.cos(math.pi * it / 700))
        opt.zero_grad()
        loss_fn(den, den, x0, cond, None, g).backward()
        opt.step()
    a_hat, s_hat = params.detach().tolist()
    assert abs(a_hat - a) < 0.03 and abs(abs(s_hat) - sq) < 0.04, (a_hat, s_hat)


def _ar1(start, a, sq, steps, g):
    traj, x = [], start
    for _ in range(steps):
        x = a * x + sq * torch.randn(x.shape, generator=g)
        traj.append(x)
    return torch.stack(traj, 1)


def test_rollout_crps_value_is_the_closed_form_of_free_running_members() -> None:
    """Members ``a' x + s z`` run on their own states from the true start ``x_0 ~ N(0, 1)``
    against the AR(1) truth: at step k, ``X - Y ~ N(0, (a'^k - a^k)^2 + v_k + w_k)`` and
    ``X - X' ~ N(0, 2 v_k)`` (``v_k = s^2 (1 - a'^2k) / (1 - a'^2)``, ``w_k`` the same for
    ``a, q``), so the expected loss is ``sqrt(2/pi) (sqrt(d_k^2 + v_k + w_k) - sqrt(2 v_k) / 2)``
    averaged over k (0.524 here); members conditioned on the true states would score 0.417."""
    a, sq, a_m, s_m, steps, sigma, n = 0.8, 0.6, 0.5, 0.3, 3, 80.0, 400_000
    g = torch.Generator().manual_seed(2)
    start = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    x0 = _ar1(start, a, sq, steps, g)
    cond = Condition(context=torch.cat([start, torch.zeros(n, 4, 1, 1, dtype=start.dtype)], 1),
                     scalars=torch.zeros(n, steps, 5, dtype=start.dtype))  # fmt: skip
    loss = rollout_crps_loss(_layout(residual=False, context=1), sigma)(
        lambda x, s, c: a_m * c.context[:, :1] + s_m * x / sigma, None, x0, cond, None, g
    )
    exact = 0.0
    for k in range(1, steps + 1):
        v = s_m**2 * (1 - a_m ** (2 * k)) / (1 - a_m**2)
        w = sq**2 * (1 - a ** (2 * k)) / (1 - a**2)
        d2 = (a_m**k - a**k) ** 2
        exact += math.sqrt(2 / math.pi) * (math.sqrt(d2 + v + w) - math.sqrt(2 * v) / 2) / steps
    assert abs(float(loss) - exact) < 0.004 * exact, (float(loss), exact)


def test_pool_noise_is_block_sums_over_root_size_brute_force() -> None:
    """``pool_noise`` against loops: each value is its block's sum over the root of the block's
    size (edge blocks smaller), so white noise keeps unit variance, one value per block."""
    x = torch.randn(3, 2, 7, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = pool_noise(x, 3)
    want = torch.empty_like(x)
    for i in range(0, 7, 3):
        for j in range(0, 10, 3):
            block = x[..., i : i + 3, j : j + 3]
            n = block.shape[-1] * block.shape[-2]
            want[..., i : i + 3, j : j + 3] = (block.sum((-2, -1)) / math.sqrt(n))[..., None, None]
    torch.testing.assert_close(got, want)
    big = pool_noise(torch.randn(20000, 1, 7, 10, generator=torch.Generator().manual_seed(1)), 3)
    assert (big.var(0) - 1).abs().max() < 0.05  # every cell, edge blocks included


def test_noise_pool_is_refused_outside_crps_generators() -> None:
    from stdiff.pipelines.engine.models import ModelConfig
    from stdiff.pipelines.jobs.distill import DistillConfig

    with pytest.raises(ValueError, match="noise_pool must be 0"):
        ModelConfig(net="dit_custom", noise_pool=1)
    with pytest.raises(ValueError, match="noise_pool needs method: crps"):
        DistillConfig(teacher="t", out="o", method="consistency", noise_pool=4)
    with pytest.raises(ValueError, match=r"needs gridded \(B, C, H, W\) inputs"):
        pool_noise(torch.zeros(2, 3, 4), 2)
