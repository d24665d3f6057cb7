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
from torch.nn import functional as F

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


def pool_noise(x: Tensor, pool: int) -> Tensor:
    """``(B, C, H, W)`` ``x`` summed over ``pool x pool`` blocks (the last ones may be smaller),
    divided by the square root of each block's size and repeated over it: white noise becomes
    block-constant noise of the same variance, ``ceil(H/pool) * ceil(W/pool)`` values a channel."""
    if x.dim() != 4:
        raise ValueError(f"model.noise_pool needs gridded (B, C, H, W) inputs, got shape "
                         f"{tuple(x.shape)}; set model.noise_pool: 0")  # fmt: skip
    h, w = x.shape[-2:]
    ones = torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype)
    total = F.avg_pool2d(x, pool, pool, ceil_mode=True, divisor_override=1)
    count = F.avg_pool2d(ones, pool, pool, ceil_mode=True, divisor_override=1)
    return F.interpolate(total / count.sqrt(), scale_factor=pool, mode="nearest")[..., :h, :w]


class NoisePool:
    """Low-dimensional input noise for a one-evaluation CRPS generator (``model.noise_pool``):
    the denoiser's input ``x = sigma z`` is :func:`pool_noise`-ed before anything sees it, so
    members differ by coherent, large-scale perturbations rather than per-pixel ones. FGN (Alet
    et al. 2025) feeds a 32-dimensional noise vector to the network's layers so that a model
    trained on marginal CRPS still draws spatially coherent members; this is that idea at the
    input. Installed as a forward pre-hook, so training and sampling see the same noise; it has
    no parameters (checkpoints record only ``model.noise_pool``)."""

    def __init__(self, pool: int) -> None:
        self.pool = pool

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (pool_noise(args[0], self.pool), *args[1:]), kwargs
        return args, {**kwargs, "x": pool_noise(kwargs["x"], self.pool)}

    def attach(self, denoiser: nn.Module) -> NoisePool:
        denoiser.register_forward_pre_hook(self, with_kwargs=True)
        return self


class X0Clip:
    """Static thresholding of a denoiser's prediction to ``[lo, hi]``, the range of the data it
    was trained on (DDPM's ``clip_denoised`` and Imagen's static thresholding, with the training
    range in place of [-1, 1]). A model that is not yet good predicts wild ``x0`` (an eps-model's
    ``D = x - sigma eps_hat`` with sigma up to 173); clipping bounds every sample to the data's
    range. ``lo``/``hi`` are floats, or one per channel along ``dim`` (a feature's, a variable's
    range). Installed as a forward hook, so it covers every denoiser kind.

    It counts what it clipped: ``fraction`` is the share of the predictions at the smallest noise
    level seen (the sampler's last evaluation, whose prediction becomes the sample) that were
    outside the range: a trained model's are not, an under-trained model's are. At large sigma
    even good eps-models predict outside the range, which ``fraction_all`` includes. Entries the
    condition gives (``cond.mask == 1``, imputation) are not counted: the sample keeps them.
    """

    def __init__(
        self, lo: float | list[float], hi: float | list[float], dim: int | None = None
    ) -> None:
        self.lo, self.hi = (
            torch.as_tensor(lo, dtype=torch.float32),
            torch.as_tensor(hi, dtype=torch.float32),
        )
        if (
            self.lo.shape != self.hi.shape
            or self.lo.ndim > 1
            or not bool((self.lo < self.hi).all())
        ):
            raise ValueError(f"x0 range must have lo < hi, got [{lo}, {hi}]")
        if self.lo.ndim == 1 and dim is None:
            raise ValueError("a range per channel needs the channel dim")
        self.dim = dim
        self._calls: list[tuple[Tensor, Tensor, Tensor]] = []  # (max sigma, clipped, counted)
        self._handle = None

    def _bounds(self, out: Tensor) -> tuple[Tensor, Tensor]:
        if self.lo.ndim == 0:
            return self.lo.to(out), self.hi.to(out)
        shape = [1] * out.ndim
        shape[self.dim] = -1
        if out.shape[self.dim] != len(self.lo):
            raise ValueError(
                f"x0 range has {len(self.lo)} channels, the prediction {out.shape[self.dim]}"
            )
        return self.lo.to(out).view(shape), self.hi.to(out).view(shape)

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        sigma = torch.as_tensor(args[1]).detach().max()
        lo, hi = self._bounds(out)
        bad = (out < lo) | (out > hi)
        given = getattr(args[2], "mask", None) if len(args) > 2 else None
        if given is not None and given.shape == out.shape:  # count the generated entries only
            free = given == 0
            self._calls.append((sigma, (bad & free).sum(), free.sum()))
        else:  # tensors: no device sync per call
            self._calls.append((sigma, bad.sum(), torch.tensor(out.numel())))
        return torch.minimum(torch.maximum(out, lo), hi)

    def clamp(self, x: Tensor) -> Tensor:
        """``x`` (channels along ``dim``) inside the range, without counting anything."""
        lo, hi = self._bounds(x)
        return torch.minimum(torch.maximum(x, lo), hi)

    def attach(self, denoiser: nn.Module) -> X0Clip:
        """Clip ``denoiser``'s outputs from now on; returns self."""
        self._handle = denoiser.register_forward_hook(self)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _totals(self, last_only: bool) -> tuple[int, int]:
        if not self._calls:
            return 0, 0
        sigmas = torch.stack([c[0].float().cpu() for c in self._calls])
        keep = sigmas <= sigmas.min() * (1 + 1e-6) if last_only else torch.ones_like(sigmas).bool()
        calls = [c for c, k in zip(self._calls, keep.tolist(), strict=True) if k]
        return int(sum(int(c[1]) for c in calls)), int(sum(int(c[2]) for c in calls))

    @property
    def fraction(self) -> float:
        """Share of the final predictions (smallest sigma) that were clipped; 0 before any."""
        clipped, total = self._totals(True)
        return clipped / total if total else 0.0

    @property
    def fraction_all(self) -> float:
        """Share of all predictions that were clipped."""
        clipped, total = self._totals(False)
        return clipped / total if total else 0.0
