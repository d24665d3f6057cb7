"""Parameterisations: the ideal network output reproduces x0 exactly; loss weightings and masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss, loss_weight
from stdiff.diffusion.precond import PREDICTIONS, Denoiser, Preconditioning
from stdiff.diffusion.schedules import csdi_quad, edm, vp_linear


class Fixed(nn.Module):
    """A 'network' that returns a preset output and records its inputs."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.seen: tuple = ()

    def forward(self, x_in, c_noise, cond):
        self.seen = (x_in, c_noise, cond)
        return self.out


def _ideal_target(prediction: str, x0, n, sigma, sd):
    if prediction == "eps":
        return n
    if prediction == "x0":
        return x0
    alpha, sig_vp = sd / math.sqrt(sigma**2 + sd**2), sigma / math.sqrt(sigma**2 + sd**2)
    if prediction == "v":  # v = alpha n - sigma_vp x0 / sd (for sd = 1 exactly the VP v)
        return alpha * n - sig_vp * x0 / sd
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    return (x0 - c_skip * (x0 + sigma * n)) / c_out


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sd", [1.0, 0.5])
@pytest.mark.parametrize("sigma", [0.01, 0.7, 30.0])
def test_ideal_output_gives_x0(prediction: str, sd: float, sigma: float) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    n = torch.randn(4, 3, generator=g, dtype=torch.float64)
    net = Fixed(_ideal_target(prediction, x0, n, sigma, sd))
    d = Denoiser(net, Preconditioning(prediction, sigma_data=sd))
    torch.testing.assert_close(d(x0 + sigma * n, sigma), x0, rtol=1e-9, atol=1e-9)
    # c_in scales to unit variance: for sd = 1 it is the VP state sqrt(abar) x0 + sqrt(1-abar) n
    if sd == 1.0:
        abar = 1 / (1 + sigma**2)
        expect = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * n
        torch.testing.assert_close(net.seen[0], expect, rtol=1e-9, atol=1e-9)
    assert torch.allclose(net.seen[1], torch.full((4,), math.log(sigma) / 4, dtype=torch.float64))


def test_timestep_conditioning_uses_discrete_index() -> None:
    s = csdi_quad()
    net = Fixed(torch.zeros(3, 2))
    d = Denoiser(net, Preconditioning("eps", 1.0, "timestep"), s)
    sig = s.sigmas_table[[0, 7, 49]].float()
    d(torch.zeros(3, 2), sig)
    torch.testing.assert_close(net.seen[1], torch.tensor([0.0, 7.0, 49.0]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="discrete schedule"):
        Denoiser(net, Preconditioning("eps", 1.0, "timestep"), edm())


def test_invalid_parameterisation() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        Preconditioning("score")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choose one of"):
        Preconditioning("eps", 1.0, "time")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choose one of"):
        loss_weight(torch.ones(1), "snr2", "eps", 1.0)  # type: ignore[arg-type]


def test_weightings_closed_form() -> None:
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(loss_weight(s, "native", "eps", 1.0), 1 / s**2)
    torch.testing.assert_close(loss_weight(s, "native", "x0", 1.0), torch.ones_like(s))
    torch.testing.assert_close(loss_weight(s, "edm", "eps", 0.5), (s**2 + 0.25) / (0.25 * s**2))
    torch.testing.assert_close(
        loss_weight(s, "min_snr", "eps", 1.0, 5.0),
        torch.tensor([5.0, 1.0, 0.01], dtype=torch.float64),
    )


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x, c_noise, cond):
        return self.lin(x)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_native_loss_is_the_parameterisation_mse(prediction: str) -> None:
    """With EDM / eps / v / x0 weighting the x0-space loss equals the native target MSE."""
    sd = 0.5 if prediction == "edm" else 1.0
    d = Denoiser(Linear().double(), Preconditioning(prediction, sd))
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.linspace(0.05, 5.0, 8, dtype=torch.float64)
    loss = denoising_loss(d, x0, edm(), sigma=sigma, generator=torch.Generator().manual_seed(2))
    n = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = sigma[:, None]
    c_skip, c_out, c_in = d.precond.coefficients(s)
    f = d.net(c_in * (x0 + s * n), None, None)
    x = x0 + s * n
    target = (x0 - c_skip * x) / c_out  # eps: n, x0: x0, v: -v/sd... , edm: EDM's F target
    if prediction == "eps":
        torch.testing.assert_close(target, n)
    torch.testing.assert_close(loss, ((f - target) ** 2).mean(), rtol=1e-9, atol=1e-12)


def test_loss_mask_scores_only_targets() -> None:
    d = Denoiser(Linear().double(), Preconditioning("eps", 1.0))
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(4, 3, dtype=torch.float64)
    mask[:, 0] = 1
    sigma = torch.full((4,), 0.5, dtype=torch.float64)
    full = denoising_loss(
        d,
        x0,
        vp_linear(),
        sigma=sigma,
        generator=torch.Generator().manual_seed(6),
        mask=torch.ones_like(mask),
    )
    masked = denoising_loss(
        d, x0, vp_linear(), sigma=sigma, generator=torch.Generator().manual_seed(6), mask=mask
    )
    # recompute the per-element error and average column 0 only
    n = torch.randn(4, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    err = (d(x0 + 0.5 * n, sigma) - x0) ** 2 / 0.25
    torch.testing.assert_close(masked, err[:, 0].mean())
    torch.testing.assert_close(full, err.mean())


def test_condition_cat_and_drop() -> None:
    c = Condition(labels=torch.tensor([1, 2]))
    both = Condition.cat([c, c.dropped()], [2, 2])
    assert both.labels.tolist() == [1, 2, 1, 2]
    assert both.drop.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="labels"):
        Condition.cat([c, Condition(scalars=torch.ones(2, 1))], [2, 2])


def test_x0_clip_bounds_every_prediction_and_counts_what_it_clipped() -> None:
    from stdiff.diffusion.precond import X0Clip

    out = torch.tensor([[-5.0, 0.0, 0.5, 9.0]])
    den = Denoiser(Fixed(out), Preconditioning("x0"), edm())  # D = F exactly (x0 prediction)
    x = torch.zeros(1, 4)
    guard = X0Clip(-1.0, 1.0).attach(den)
    assert torch.equal(den(x, 3.0), torch.tensor([[-1.0, 0.0, 0.5, 1.0]]))
    assert guard.fraction == 2 / 4
    den.net.out = torch.tensor([[0.0, 0.1, 0.2, 0.3]])
    den(x, torch.tensor([0.5]))  # the smallest sigma so far: its call alone makes `fraction`
    assert guard.fraction == 0.0 and guard.fraction_all == 2 / 8
    guard.detach()
    den.net.out = out
    assert torch.equal(den(x, 0.1), out) and guard.fraction_all == 2 / 8  # detached: not counted
    with pytest.raises(ValueError, match="lo < hi"):
        X0Clip(1.0, 1.0)
    per_channel = X0Clip([-1.0, 0.0], [1.0, 0.5], dim=1).attach(den)  # (B, C, L): channel dim 1
    den.net.out = torch.tensor([[[-2.0, 2.0], [-2.0, 2.0]]])
    assert torch.equal(den(torch.zeros(1, 2, 2), 1.0), torch.tensor([[[-1.0, 1.0], [0.0, 0.5]]]))
    assert per_channel.fraction == 1.0
    den.net.out = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="2 channels, the prediction 3"):
        den(torch.zeros(1, 3, 2), 1.0)
