"""Noise schedules in the sigma (EDM / variance-exploding) convention.

Every schedule is a frozen dataclass that describes the noise level ``sigma`` of the
perturbed data ``x = x0 + sigma * n`` (Karras et al. 2022, "EDM", eq. 1-2). Variance-preserving
(VP) schedules such as DDPM's are mapped through ``sigma = sqrt((1 - abar) / abar)``; a VP state
is ``x_vp = x / sqrt(1 + sigma^2)``, which is what the preconditioning's ``c_in`` does, so one set of
samplers serves every schedule.

Each schedule provides
  * ``sigma(t)`` for ``t`` in [0, 1] (monotone increasing, ``sigma(0) = sigma_min``),
  * ``discretize(n, spacing=...)`` -> ``sigmas[n + 1]``, descending and ending in exactly 0,
  * ``sample_training_sigma(shape, generator)``, the training noise distribution,
  * ``sigma_to_t(sigma)``, the network's timestep input for discrete-time models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from stdiff.diffusion.rng import ensure_generator

Spacing = Literal["default", "trailing", "leading", "linspace", "karras", "log", "uniform_t"]
SPACINGS: tuple[str, ...] = get_args(Spacing)

# Zero terminal SNR means sigma_max = inf; like diffusers' schedulers we clamp the final
# alpha-bar to 2**-24 (sigma_max ~ 4096) so that every sampler stays finite.
ZERO_SNR_ALPHA_BAR = 2.0**-24


def _check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not valid; choose one of {list(SPACINGS)}")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"discretize(n): n must be a positive integer, got {n!r}")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM time steps (Karras et al. 2022, eq. 5): ``n`` sigmas from sigma_max to sigma_min, then 0.

    Returns a float64 tensor of shape ``(n + 1,)``.
    """
    _check_n(n)
    ramp = (
        torch.linspace(0, 1, n, dtype=torch.float64)
        if n > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def uniform_t(n: int) -> Tensor:
    """``t_i = 1 - i / n`` for ``i < n`` (the last step goes from ``t = 1/n`` to sigma = 0).

    The ``uniform_t`` spacing of progressive distillation (Salimans & Ho 2022): the grid of ``n``
    steps is every other point of the grid of ``2n`` steps, so a student's step is exactly two of
    its teacher's."""
    _check_n(n)
    return 1 - torch.arange(n, dtype=torch.float64) / n


def log_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` sigmas geometric from sigma_max to sigma_min (uniform in log sigma), then 0."""
    _check_n(n)
    sig = torch.exp(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    )
    return torch.cat([sig, sig.new_zeros(1)])


@dataclass(frozen=True)
class ContinuousSchedule:
    """Continuous-time schedule: ``kind="ve"`` (score-SDE, geometric) or ``kind="edm"`` (Karras rho).

    Fields:
      sigma_min, sigma_max: noise range (data units).
      rho: EDM time-step exponent (``kind="edm"``).
      p_mean, p_std: EDM log-normal training distribution ``ln sigma ~ N(p_mean, p_std^2)``;
        ``kind="ve"`` trains on ``sigma`` log-uniform in [sigma_min, sigma_max] (Song et al. 2021).
    """

    kind: Literal["ve", "edm"]
    sigma_min: float
    sigma_max: float
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if self.kind not in ("ve", "edm"):
            raise ValueError(f"kind={self.kind!r} is not valid; choose one of ['ve', 'edm']")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t), t in [0, 1]."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "ve":
            return self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma` (clamped to [0, 1])."""
        s = torch.as_tensor(sigma, dtype=torch.float64).clamp(self.sigma_min, self.sigma_max)
        if self.kind == "ve":
            return torch.log(s / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (s ** (1 / self.rho) - lo) / (hi - lo)

    def discretize(self, n: int, spacing: Spacing = "default") -> Tensor:
        """``n`` noise levels from sigma_max down to sigma_min followed by 0 (float64, ``(n+1,)``).

        ``default`` is Karras spacing for EDM and geometric (``log``) for VE.
        """
        _check_spacing(spacing)
        if spacing == "default":
            spacing = "karras" if self.kind == "edm" else "log"
        if spacing == "karras":
            return karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho)
        if spacing == "log":
            return log_sigmas(n, self.sigma_min, self.sigma_max)
        _check_n(n)
        if spacing == "uniform_t":
            return torch.cat([self.sigma(uniform_t(n)), torch.zeros(1, dtype=torch.float64)])
        t = torch.linspace(1, 0, n, dtype=torch.float64)
        return torch.cat([self.sigma(t), torch.zeros(1, dtype=torch.float64)])

    def sample_training_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` training noise levels (float32, ``(n,)``)."""
        g = ensure_generator(generator)
        if self.kind == "edm":
            z = torch.randn(n, generator=g, device=g.device, dtype=torch.float64).cpu()
            return torch.exp(self.p_mean + self.p_std * z).float()
        u = torch.rand(n, generator=g, device=g.device, dtype=torch.float64).cpu()
        return self.sigma(u).float()

    @property
    def sigma_data_hint(self) -> float:
        return 0.5 if self.kind == "edm" else 1.0


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """Discrete-time variance-preserving schedule given by its betas (DDPM, IDDPM, CSDI).

    ``alpha_bar[k] = prod_{i<=k} (1 - beta_i)`` for ``k = 0..T-1``; ``sigma_k = sqrt((1-abar)/abar)``.
    ``t`` in [0, 1] maps to the fractional index ``t * (T - 1)``, interpolated linearly in
    ``log sigma`` (as k-diffusion does), so ``sigma_to_t`` returns the network's timestep input
    ``k = t * (T - 1)`` through :meth:`timestep`.
    """

    name: str
    betas: Tensor = field(repr=False)
    default_spacing: Spacing = "trailing"
    alpha_bar: Tensor = field(init=False, repr=False)
    sigmas_table: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = torch.as_tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or len(b) < 2 or bool(((b <= 0) | (b > 1)).any()):
            raise ValueError(f"schedule {self.name!r}: betas must be a 1-D sequence in (0, 1]")
        abar = torch.cumprod(1 - b, 0).clamp_min(ZERO_SNR_ALPHA_BAR)
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "alpha_bar", abar)
        object.__setattr__(self, "sigmas_table", ((1 - abar) / abar).sqrt())

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas_table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas_table[-1])

    @property
    def sigma_data_hint(self) -> float:
        return 1.0

    def sigma(self, t: Tensor) -> Tensor:
        """sigma at fractional timestep ``t * (T - 1)``, t in [0, 1]."""
        k = torch.as_tensor(t, dtype=torch.float64).clamp(0, 1) * (self.num_timesteps - 1)
        lo = k.floor().long().clamp(max=self.num_timesteps - 2)
        w = k - lo
        logs = self.sigmas_table.log()
        return torch.exp((1 - w) * logs[lo] + w * logs[lo + 1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep index in [0, T-1] whose sigma is ``sigma`` (log-sigma interpolation)."""
        logs = self.sigmas_table.log().to(torch.as_tensor(sigma).device)
        ls = torch.as_tensor(sigma, dtype=torch.float64).clamp_min(1e-30).log()
        ls = ls.clamp(logs[0], logs[-1])
        hi = torch.searchsorted(logs, ls.reshape(-1).contiguous()).clamp(1, len(logs) - 1)
        lo = hi - 1
        w = (ls.reshape(-1) - logs[lo]) / (logs[hi] - logs[lo])
        return (lo + w).reshape(ls.shape)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self.timestep(sigma) / (self.num_timesteps - 1)

    def discretize(self, n: int, spacing: Spacing = "default") -> Tensor:
        """``n`` of the T discrete noise levels, descending, then 0 (float64, ``(n+1,)``).

        Spacings (Lin et al. 2023, table 2): ``trailing`` ends exactly on the last timestep
        (needed for zero terminal SNR), ``leading`` is DDIM's original choice, ``linspace``
        rounds a linear grid; ``karras`` and ``log`` use the schedule's sigma range continuously;
        ``uniform_t`` is the nested grid of progressive distillation (:func:`uniform_t`, rounded
        to integer timesteps).
        """
        _check_spacing(spacing)
        _check_n(n)
        T = self.num_timesteps
        if spacing == "default":
            spacing = self.default_spacing
        if spacing == "karras":
            return karras_sigmas(n, self.sigma_min, self.sigma_max)
        if spacing == "log":
            return log_sigmas(n, self.sigma_min, self.sigma_max)
        if spacing == "uniform_t":  # integer timesteps, so the network sees its training inputs
            idx = torch.round(uniform_t(n) * (T - 1)).long()
            if len(set(idx.tolist())) < n:
                raise ValueError(f"discretize(n={n}, spacing='uniform_t') needs n < T={T}")
            return torch.cat([self.sigmas_table[idx], torch.zeros(1, dtype=torch.float64)])
        if n > T:
            raise ValueError(f"discretize(n={n}) with spacing={spacing!r} needs n <= T={T}")
        if spacing == "trailing":
            idx = torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)).long() - 1
        elif spacing == "leading":
            idx = (torch.arange(n, dtype=torch.float64) * (T // n)).long().flip(0)
        else:  # linspace
            idx = torch.round(torch.linspace(T - 1, 0, n, dtype=torch.float64)).long()
        idx = idx[:n]
        return torch.cat([self.sigmas_table[idx], torch.zeros(1, dtype=torch.float64)])

    def sample_training_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform timestep index, as DDPM/CSDI training does (float32, ``(n,)``)."""
        g = ensure_generator(generator)
        k = torch.randint(0, self.num_timesteps, (n,), generator=g, device=g.device).cpu()
        return self.sigmas_table[k].float()


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2023, algorithm 1: shift and scale sqrt(alpha_bar) so the last one is 0."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    sa = torch.cumprod(1 - b, 0).sqrt()
    first, last = sa[0].clone(), sa[-1].clone()
    sa = (sa - last) * first / (first - last)
    abar = sa**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def vp_linear(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, zero_terminal_snr: bool = False
) -> DiscreteSchedule:
    """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 over T=1000 steps."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return DiscreteSchedule("vp_linear" + ("_zsnr" if zero_terminal_snr else ""), betas)


def vp_cosine(
    T: int = 1000, s: float = 0.008, max_beta: float = 0.999, zero_terminal_snr: bool = False
) -> DiscreteSchedule:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2(((t/T)+s)/(1+s) pi/2)."""

    def f(t: Tensor) -> Tensor:
        return torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(T + 1, dtype=torch.float64)
    abar = f(t) / f(torch.zeros(1, dtype=torch.float64))
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return DiscreteSchedule("vp_cosine" + ("_zsnr" if zero_terminal_snr else ""), betas)


def csdi_quad(
    T: int = 50, beta_start: float = 1e-4, beta_end: float = 0.5, zero_terminal_snr: bool = False
) -> DiscreteSchedule:
    """CSDI (Tashiro et al. 2021) "quad": sqrt(beta) linear from sqrt(1e-4) to sqrt(0.5), T=50."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return DiscreteSchedule("csdi_quad" + ("_zsnr" if zero_terminal_snr else ""), betas)


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> ContinuousSchedule:
    """Score-SDE VE (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
    return ContinuousSchedule("ve", sigma_min, sigma_max)


def edm(
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> ContinuousSchedule:
    """EDM (Karras et al. 2022): Karras steps with rho=7 and log-normal training sigmas."""
    return ContinuousSchedule("edm", sigma_min, sigma_max, rho, p_mean, p_std)


NoiseSchedule = ContinuousSchedule | DiscreteSchedule

SCHEDULES = {
    "vp_linear": vp_linear,
    "vp_cosine": vp_cosine,
    "csdi_quad": csdi_quad,
    "ve": ve,
    "edm": edm,
}


def make_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a schedule from the registry by name (``SCHEDULES``) with keyword overrides."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is not known; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"schedule {name!r}: bad parameters {sorted(kwargs)}: {e}") from None
