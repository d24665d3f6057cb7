"""Parameterisations and preconditioning: a raw network becomes a denoiser ``D(x, sigma, cond)``.

With ``x = x0 + sigma * n`` the denoiser is (Karras et al. 2022, eq. 7)

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma), cond)

and the prediction type picks the coefficients (sd = ``sigma_data``; sd = 1 is exact VP):

    =========  ===================  ========================  =================
    prediction c_skip               c_out                     F predicts
    =========  ===================  ========================  =================
    eps        1                    -sigma                    the noise n
    v          sd^2/(s^2+sd^2)      -s sd/sqrt(s^2+sd^2)      v = a n - s_vp x0
    x0         0                    1                         x0
    edm        sd^2/(s^2+sd^2)      s sd/sqrt(s^2+sd^2)       EDM's F target
    =========  ===================  ========================  =================

with ``c_in = 1/sqrt(sigma^2 + sd^2)`` for all (for sd = 1 this is the VP state
``x_vp = sqrt(abar) x``). ``c_noise`` is ``ln(sigma)/4`` (EDM) or the discrete schedule's
fractional timestep (DDPM/CSDI networks trained on integer steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.schedules import DiscreteSchedule, NoiseSchedule

Prediction = Literal["eps", "v", "x0", "edm"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
NoiseConditioning = Literal["log_sigma", "timestep"]


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcastable sigma of shape ``(B, 1, ..., 1)`` for ``x`` of shape ``(B, ...)``."""
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}"
        )
    return s.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class Preconditioning:
    """Coefficients of one parameterisation (see the module docstring).

    Fields:
      prediction: what the raw network predicts, one of ``eps``, ``v``, ``x0``, ``edm``.
      sigma_data: data standard deviation assumed by the coefficients (1.0 = VP, 0.5 = EDM's default).
      noise_conditioning: ``log_sigma`` (``ln(sigma)/4``) or ``timestep`` (needs a discrete schedule).
    """

    prediction: Prediction = "edm"
    sigma_data: float = 0.5
    noise_conditioning: NoiseConditioning = "log_sigma"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction={self.prediction!r} is not valid; choose one of {list(PREDICTIONS)}"
            )
        if self.noise_conditioning not in ("log_sigma", "timestep"):
            raise ValueError(
                f"noise_conditioning={self.noise_conditioning!r} is not valid; "
                "choose one of ['log_sigma', 'timestep']"
            )
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` for a tensor of sigmas (any shape)."""
        sd = self.sigma_data
        norm = (sigma**2 + sd**2).sqrt()
        c_in = 1 / norm
        if self.prediction == "eps":
            return torch.ones_like(sigma), -sigma, c_in
        if self.prediction == "x0":
            return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
        c_skip = sd**2 / norm**2
        c_out = sigma * sd / norm
        return c_skip, (-c_out if self.prediction == "v" else c_out), c_in


class Denoiser(nn.Module):
    """A network wrapped with its preconditioning: ``forward(x, sigma, cond) -> x0_hat``.

    The wrapped ``net(x_in, c_noise, cond)`` maps ``(B, ...)`` inputs and ``(B,)`` noise
    conditioning to an output of the input's shape.
    """

    def __init__(
        self, net: nn.Module, precond: Preconditioning, schedule: NoiseSchedule | None = None
    ) -> None:
        super().__init__()
        if precond.noise_conditioning == "timestep" and not isinstance(schedule, DiscreteSchedule):
            raise ValueError(
                "noise_conditioning='timestep' needs a discrete schedule (vp_*, csdi_quad)"
            )
        self.net = net
        self.precond = precond
        self.schedule = schedule

    def c_noise(self, sigma: Tensor) -> Tensor:
        """The network's noise input, shape ``(B,)``."""
        if self.precond.noise_conditioning == "timestep":
            assert isinstance(self.schedule, DiscreteSchedule)
            return self.schedule.timestep(sigma).to(sigma.dtype)
        return sigma.log() / 4

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        s = expand_sigma(sigma, x)  # (B, 1, ..., 1)
        c_skip, c_out, c_in = self.precond.coefficients(s)
        out = self.net(c_in * x, self.c_noise(s.reshape(-1)), cond)
        return c_skip * x + c_out * out.to(x.dtype)
