"""Samplers: pure functions with one signature, collected in ``SAMPLERS``.

    sampler(denoiser, x, sigmas, cond=None, *, generator=None, callback=None, **options) -> x0

``x`` is the starting state at ``sigmas[0]`` (``randn * sigmas[0]``), ``sigmas`` a descending
sequence (usually ``schedule.discretize(n)``, ending in 0), ``denoiser(x, sigma[B], cond)`` any
callable returning ``x0_hat``. Everything works in the sigma (EDM/VE) coordinates
``x = x0 + sigma * n`` (Karras et al. 2022, sec. 2), where

    probability-flow ODE:  dx/dsigma = (x - D(x, sigma)) / sigma
    reverse SDE:           dx = -2 sigma score dsigma + sqrt(2 sigma) dW,  score = (D - x) / sigma^2

In these coordinates DDIM(eta=0) is exactly the Euler method and DDPM ancestral sampling is
DDIM with eta=1, so both are one function. ``generator`` is one ``torch.Generator`` or one per
batch element (see :mod:`diffusion.rng`); ``callback`` receives a dict with ``i``, ``sigma``,
``sigma_next``, ``x`` and ``denoised`` after every step; when it returns a tensor, that tensor replaces
``x`` (the hook that data consistency, RePaint's replacement and DPS use, ``diffusion.inverse``).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.ode import solve_rk45
from stdiff.diffusion.rng import Generators, ensure_generator, randn, randn_like

DenoiserFn = Callable[[Tensor, Tensor, Condition | None], Tensor]
Callback = Callable[[dict[str, Any]], Tensor | None] | None


def _sigma_list(sigmas: Tensor | Sequence[float]) -> list[float]:
    sig = [float(s) for s in sigmas]
    if len(sig) < 2:
        raise ValueError(f"sigmas: need at least 2 noise levels, got {len(sig)}")
    if any(b >= a for a, b in itertools.pairwise(sig)) or sig[-1] < 0:
        raise ValueError("sigmas must be strictly decreasing and non-negative (e.g. ending in 0)")
    return sig


def _denoise(denoiser: DenoiserFn, x: Tensor, sigma: float, cond: Condition | None) -> Tensor:
    return denoiser(x, x.new_full((x.shape[0],), sigma), cond)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` splitting a step into a deterministic part and fresh noise.

    With eta=1 this is the DDPM posterior q(x_next | x, x0): variance
    ``sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2`` (Ho et al. 2020, eq. 7, in sigma form).
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _report(
    callback: Callback, i: int, sigma: float, x: Tensor, denoised: Tensor, sigma_next: float
) -> Tensor:
    """Call ``callback`` after step ``i``; a tensor it returns replaces ``x``."""
    if callback is None:
        return x
    out = callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised})
    return x if out is None else out


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, cond=None, *, generator=None, callback=None, eta=0.0):
    """DDIM (Song, Meng & Ermon 2021, eq. 12); ``eta=0`` deterministic (= Euler), ``eta=1`` DDPM.

    One evaluation per step.
    """
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        denoised = _denoise(denoiser, x, s, cond)
        s_down, s_up = ancestral_step(s, s_next, eta)
        x = denoised + (s_down / s) * (x - denoised)
        if s_up > 0:
            x = x + s_up * randn_like(x, generator)
        x = _report(callback, i, s, x, denoised, s_next)
    return x


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, cond=None, *, generator=None, callback=None):
    """Euler's method on the probability-flow ODE (EDM, algorithm 1 without the Heun correction)."""
    sig = _sigma_list(sigmas)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        denoised = _denoise(denoiser, x, s, cond)
        d = (x - denoised) / s
        x = x + (s_next - s) * d
        x = _report(callback, i, s, x, denoised, s_next)
    return x


def _churn(x, s, n, generator, s_churn, s_tmin, s_tmax, s_noise):
    """EDM's stochastic churn: raise sigma to ``s (1 + gamma)`` with ``gamma = min(s_churn / n,
    sqrt(2) - 1)`` for ``s`` in ``[s_tmin, s_tmax]`` by adding noise. Returns ``(x, s_hat)``."""
    gamma = min(s_churn / n, math.sqrt(2) - 1) if s_churn > 0 and s_tmin <= s <= s_tmax else 0.0
    if gamma == 0:
        return x, s
    s_hat = s * (1 + gamma)
    return x + math.sqrt(s_hat**2 - s**2) * s_noise * randn_like(x, generator), s_hat


@torch.no_grad()
def sample_heun(
    denoiser,
    x,
    sigmas,
    cond=None,
    *,
    generator=None,
    callback=None,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """EDM algorithm 2 (Karras et al. 2022): Heun's 2nd-order method with optional churn.

    ``s_churn > 0`` adds noise ``gamma = min(s_churn / N, sqrt(2) - 1)`` for sigma in
    ``[s_tmin, s_tmax]``. ``2N - 1`` evaluations for N steps ending at 0.
    """
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    n = len(sig) - 1
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        x, s_hat = _churn(x, s, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, s_hat, cond)
        d = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:  # second-order correction
            d_next = (x_next - _denoise(denoiser, x_next, s_next, cond)) / s_next
            x_next = x + (s_next - s_hat) * (d + d_next) / 2
        x = x_next
        x = _report(callback, i, s, x, denoised, s_next)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, cond=None, *, generator=None, callback=None, eta=0.0):
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): multistep, data prediction, t = -log sigma.

    ``eta = 0`` solves the probability-flow ODE; ``eta = 1`` is SDE-DPM-Solver++(2M) (same paper,
    sec. 5: the reverse SDE's exact linear part with the data prediction extrapolated linearly,
    "midpoint" form): with ``h = log(s / s_next)``

        x <- (s_next / s) e^{-eta h} x + (1 - e^{-(1 + eta) h}) d + s_next sqrt(1 - e^{-2 eta h}) z

    where ``d = D + (D - D_prev) / (2 r)``, ``r = h_prev / h``. Its first order part is DDPM's
    posterior step (``eta = 1``) or DDIM (``eta = 0``); registered as ``dpmpp_2m`` and
    ``dpmpp_2m_sde``. One evaluation per step; the first step is first order.
    """
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator) if eta > 0 else generator
    old_denoised, h_last = None, None
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        denoised = _denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)  # t_next - t with t = -log(sigma)
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * d
            if eta > 0:
                x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * randn_like(x, generator)
            h_last = h
        old_denoised = denoised
        x = _report(callback, i, s, x, denoised, s_next)
    return x


@torch.no_grad()
def sample_dpmpp_2s(
    denoiser,
    x,
    sigmas,
    cond=None,
    *,
    generator=None,
    callback=None,
    eta=0.0,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """DPM-Solver++(2S) (Lu et al. 2022, algorithm 1, r = 1/2): single-step, two evaluations.

    ``eta > 0`` makes it ancestral (fresh noise ``sigma_up`` each step); ``s_churn`` adds EDM's
    churn before a step (GenCast's sampler: 2S with churn 2.5 for sigma in [0.75, 80] and
    ``s_noise`` 1.05). ``2N - 1`` evaluations.
    """
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    n = len(sig) - 1
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        x, s = _churn(x, s, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, s, cond)
        s_down, s_up = ancestral_step(s, s_next, eta)
        if s_down == 0:
            x = denoised
        else:
            h = math.log(s / s_down)
            s_mid = math.sqrt(s * s_down)  # t + h/2 with t = -log(sigma)
            x_mid = (s_mid / s) * x - math.expm1(-h / 2) * denoised
            denoised_mid = _denoise(denoiser, x_mid, s_mid, cond)
            x = (s_down / s) * x - math.expm1(-h) * denoised_mid
        if s_up > 0:
            x = x + s_up * randn_like(x, generator)
        x = _report(callback, i, s, x, denoised, s_next)
    return x


def langevin_step(denoiser, x, sigma, cond, generator, snr=0.16):
    """One Langevin corrector step (Song et al. 2021, algorithm 4).

    ``eps = 2 (snr |z| / |score|)^2``; ``x <- x + eps score + sqrt(2 eps) z``. As in the paper's
    code the norms are averaged over the batch: per-sample norms are unreliable in low dimension
    (a score near 0 gives an unbounded step). So this step couples the samples of a batch.
    """
    score = (_denoise(denoiser, x, sigma, cond) - x) / sigma**2
    z = randn_like(x, generator)
    z_norm = z.flatten(1).norm(dim=1).mean()
    s_norm = score.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
    eps = 2 * (snr * z_norm / s_norm) ** 2
    return x + eps * score + (2 * eps).sqrt() * z


@torch.no_grad()
def sample_pc(
    denoiser, x, sigmas, cond=None, *, generator=None, callback=None, snr=0.16, corrector_steps=1
):
    """Predictor-corrector (Song et al. 2021, algorithm 2): an Euler-Maruyama step of the reverse
    SDE (eq. 6, VE form), ``x <- x + (s^2 - s_next^2) score + sqrt(s^2 - s_next^2) z``, followed
    by ``corrector_steps`` Langevin corrector steps at each new noise level; the last step to
    sigma = 0 returns the denoised mean (the usual "noise removal"). ``corrector_steps=0`` is plain
    Euler-Maruyama (registered as ``euler_maruyama``).
    ``N + corrector_steps (N - 1)`` evaluations for N steps ending at 0.
    """
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        denoised = _denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            var = s**2 - s_next**2
            x = x + var * (denoised - x) / s**2 + math.sqrt(var) * randn_like(x, generator)
            for _ in range(corrector_steps):
                x = langevin_step(denoiser, x, s_next, cond, generator, snr)
        x = _report(callback, i, s, x, denoised, s_next)
    return x


@torch.no_grad()
def sample_pf_ode(
    denoiser, x, sigmas, cond=None, *, generator=None, callback=None, rtol=1e-5, atol=1e-5
):
    """The probability-flow ODE solved adaptively (Dormand-Prince 5(4)) from ``sigmas[0]`` to the
    smallest non-zero sigma, in ``u = log(sigma)`` where ``dx/du = x - D(x, e^u)``; a final
    denoising step follows when ``sigmas`` ends in 0. Intermediate sigmas are not used.
    """
    sig = _sigma_list(sigmas)
    s_end = sig[-1] if sig[-1] > 0 else sig[-2]

    def f(u: float, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (y[0] - _denoise(denoiser, y[0], math.exp(u), cond),)

    if s_end < sig[0]:
        (x,), _ = solve_rk45(f, (x,), math.log(sig[0]), math.log(s_end), rtol=rtol, atol=atol)
    if sig[-1] == 0:
        denoised = _denoise(denoiser, x, s_end, cond)
        x = _report(callback, 0, s_end, denoised, denoised, 0.0)
    return x


@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, cond=None, *, generator=None, callback=None):
    """Multistep consistency sampling (Song et al. 2023, algorithm 1): ``x0 = f(x, s_i)``, then
    fresh noise up to the next level, ``x = x0 + s_{i+1} z``; one evaluation per step. Meant for
    consistency models (``diffusion.distill.ConsistencyDenoiser``); ``sigmas[0]`` is the start."""
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        denoised = _denoise(denoiser, x, s, cond)
        x = denoised + s_next * randn_like(x, generator) if s_next > 0 else denoised
        x = _report(callback, i, s, x, denoised, s_next)
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: the function, whether it draws noise, and its evaluations for N steps
    ending at sigma = 0 (``evals``)."""

    fn: Callable[..., Tensor]
    stochastic: bool
    evals: Callable[[int], int] | None  # None: adaptive


def _one(n: int) -> int:
    return n


def _two(n: int) -> int:
    return 2 * n - 1


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(partial(sample_ddim, eta=1.0), True, _one),
    "ddim": SamplerSpec(sample_ddim, False, _one),
    "euler": SamplerSpec(sample_euler, False, _one),
    "heun": SamplerSpec(sample_heun, False, _two),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, False, _one),
    "dpmpp_2m_sde": SamplerSpec(partial(sample_dpmpp_2m, eta=1.0), True, _one),
    "dpmpp_2s": SamplerSpec(sample_dpmpp_2s, False, _two),
    "euler_maruyama": SamplerSpec(partial(sample_pc, corrector_steps=0), True, _one),
    "pc": SamplerSpec(sample_pc, True, _two),
    "pf_ode": SamplerSpec(sample_pf_ode, False, None),
    "consistency": SamplerSpec(sample_consistency, True, _one),
}


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not known; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def steps_for_evals(name: str, evals: int) -> int:
    """The largest number of steps whose evaluation count is at most ``evals``."""
    spec = get_sampler(name)
    if spec.evals is None:
        raise ValueError(f"sampler {name!r} is adaptive; its evaluation count is not set by steps")
    n = 1
    while spec.evals(n + 1) <= evals:
        n += 1
    return n


def option_names(name: str) -> list[str]:
    """The keyword options the sampler ``name`` takes (e.g. ``s_churn`` for ``heun``)."""
    fn = get_sampler(name).fn
    params = inspect.signature(fn).parameters
    fixed = fn.keywords if isinstance(fn, partial) else {}
    return [
        p
        for p, v in params.items()
        if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in ("generator", "callback", *fixed)
    ]


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the valid options when ``options`` has an unknown key."""
    valid = option_names(name)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"sampler {name!r}: unknown option(s) {bad}; valid options are {valid}")


def sample(
    denoiser: DenoiserFn,
    shape: Sequence[int],
    sigmas: Tensor | Sequence[float],
    cond: Condition | None = None,
    *,
    sampler: str = "heun",
    generator: Generators = None,
    callback: Callback = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Tensor:
    """Draw ``randn(shape) * sigmas[0]`` with ``generator`` and run the named sampler on it."""
    spec = get_sampler(sampler)
    check_options(sampler, options)
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    x = randn(shape, generator, device=device, dtype=dtype) * sig[0]
    return spec.fn(denoiser, x, sig, cond, generator=generator, callback=callback, **options)
