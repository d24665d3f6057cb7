"""Learned reverse-process variances (Nichol & Dhariwal 2021, "Improved DDPM", IDDPM).

The network outputs ``2C`` channels: the first ``C`` go through the usual preconditioning to give
``x0_hat``, the last ``C`` are the raw variance output ``v``. With ``frac = (v + 1) / 2``

    log Sigma_t = frac * log beta_t + (1 - frac) * log beta_tilde_t          (IDDPM eq. 15)

interpolates between the two classic fixed choices ("large" beta_t, "small" beta_tilde_t).

Coordinates. The repo works in sigma coordinates ``x = x0 + sigma n``; a DDPM step lives in VP
coordinates ``x_vp = sqrt(abar) x`` with ``abar = 1 / (1 + sigma^2)``. For any pair of noise levels
``sigma_t > sigma_s >= 0`` (consecutive levels of the schedule or of a respaced grid: IDDPM
recomputes the betas from the kept alpha-bars, which is exactly this)

    beta_t       = 1 - abar_t / abar_s
    beta_tilde_t = (1 - abar_s) / (1 - abar_t) * beta_t
    q(x_s | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, beta_tilde_t)      (VP coordinates)
    coef_x0 = sqrt(abar_s) beta_t / (1 - abar_t),  coef_xt = sqrt(1 - beta_t) (1 - abar_s) / (1 - abar_t)

and the model is ``p(x_s | x_t) = N(coef_x0 x0_hat + coef_xt x_t, Sigma_t)``. Every variance here
(beta, beta_tilde, Sigma) is a VP-coordinate variance; in sigma coordinates it is ``Sigma / abar_s``.
KL terms are computed in VP coordinates (a KL is invariant under the same affine map of both
arguments, so they equal the sigma-coordinate KLs). At ``sigma_s = 0`` VP coordinates are the data
coordinates, where the decoder ``p(x0 | x_t)`` is evaluated: IDDPM's discretised Gaussian for data
in [-1, 1] (``decoder="discretized"``) or a plain Gaussian density (``decoder="gaussian"``, for
continuous data). There ``beta_tilde = 0``; as IDDPM (``posterior_log_variance_clipped``) the
decoder's beta_tilde is that of the step above, ``beta_tilde(sigma_above -> sigma_t)``;
``sigma_above = inf`` (the default when unknown) makes it equal to beta_t. The decoder's "large"
variance is beta_t = 1 - abar_t (IDDPM's fixed-large mode uses beta_tilde of the step above there).

Units: ``vlb_terms`` returns nats per sample (summed over dimensions); ``vlb_bits_per_dim`` bits per
dimension; ``hybrid_loss``'s VLB part is IDDPM's ``_vb_terms_bpd`` (bits, mean over dimensions) times
``T``, so ``vlb_weight = 0.001`` is exactly IDDPM's ``RESCALED_MSE`` hybrid objective
``mse + vb * T / 1000`` (their lambda = 0.001 on ``L_vlb = sum_t L_t``, estimated as ``T L_t``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import Weighting, loss_weight, masked_mean
from stdiff.diffusion.precond import Denoiser, Preconditioning, expand_sigma
from stdiff.diffusion.rng import Generators, ensure_generator, randn_like
from stdiff.diffusion.samplers import SAMPLERS, SamplerSpec, _denoise, _one, _report, _sigma_list
from stdiff.diffusion.schedules import DiscreteSchedule

Variance = Literal["learned", "large", "small"]
VARIANCES: tuple[str, ...] = get_args(Variance)
Decoder = Literal["discretized", "gaussian"]
DECODERS: tuple[str, ...] = get_args(Decoder)


class VarianceDenoiser(Denoiser):
    """A :class:`Denoiser` whose net outputs ``2C`` channels along dim 1 (DiT ``learn_sigma``, UNet
    ``out_channels=2C``): the first ``C`` are preconditioned into ``x0_hat`` as usual, the last ``C``
    are the raw variance output ``v`` (IDDPM: ``frac = (v + 1) / 2``).

    ``forward(x, sigma, cond) -> x0_hat``, so every sampler works unchanged; ``predict`` (or
    ``forward(..., return_variance=True)``, which survives DDP / torch.compile wrappers) returns
    ``(x0_hat, v)``.
    """

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | float,
        cond: Condition | None = None,
        *,
        return_variance: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        s = expand_sigma(sigma, x)  # (B, 1, ..., 1)
        c_skip, c_out, c_in = self.precond.coefficients(s)
        out = self.net(c_in * x, self.c_noise(s.reshape(-1)), cond)  # (B, 2C, ...)
        c = x.shape[1]
        if out.ndim != x.ndim or out.shape[1] != 2 * c or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"VarianceDenoiser: the net must output 2C = {2 * c} channels along dim 1 for an "
                f"input of shape {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        x0_hat = c_skip * x + c_out * out[:, :c].to(x.dtype)
        if return_variance:
            return x0_hat, out[:, c:].to(x.dtype)
        return x0_hat

    def predict(
        self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x0_hat, v)``, both of ``x``'s shape; ``v`` is the raw network output."""
        return self.forward(x, sigma, cond, return_variance=True)


# ------------------------------------------------------------------------------------------------
# Discrete DDPM algebra for an arbitrary pair of noise levels


def _real(device: torch.device | str | None) -> torch.dtype:
    """float64 for the schedule algebra, except where the device has none (MPS)."""
    return torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64


def _real_tensor(value, device, dtype: torch.dtype) -> Tensor:
    """``value`` as a ``dtype`` tensor; Python floats are converted without a float32 detour."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(value, dtype=dtype, device=device)


@dataclass(frozen=True)
class DDPMStep:
    """Coefficients of the DDPM step ``sigma_t -> sigma_s`` (VP coordinates, float64 tensors of the
    sigmas' broadcast shape). See the module docstring for the formulas."""

    abar_t: Tensor
    abar_s: Tensor
    beta: Tensor
    beta_tilde: Tensor
    coef_x0: Tensor
    coef_xt: Tensor


def ddpm_step(sigma_t: Tensor | float, sigma_s: Tensor | float) -> DDPMStep:
    """The step from ``sigma_t`` down to ``sigma_s`` (``sigma_t > sigma_s >= 0``, inf allowed for
    sigma_t); tensors broadcast against each other."""
    device = next((t.device for t in (sigma_t, sigma_s) if isinstance(t, Tensor)), None)
    dt = _real(device)
    st, ss = _real_tensor(sigma_t, device, dt), _real_tensor(sigma_s, device, dt)
    abar_t, abar_s = 1 / (1 + st**2), 1 / (1 + ss**2)
    beta = 1 - abar_t / abar_s
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta
    coef_x0 = abar_s.sqrt() * beta / (1 - abar_t)
    coef_xt = (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t)
    return DDPMStep(abar_t, abar_s, beta, beta_tilde, coef_x0, coef_xt)


def _expand(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` (scalar or ``(B,)``) as a float64 tensor on ``x``'s device that broadcasts against
    ``x``: ``(1, ..., 1)`` for a scalar (no per-sample work), ``(B, 1, ..., 1)`` otherwise."""
    s = _real_tensor(sigma, x.device, _real(x.device))
    if s.ndim == 0:
        return s.reshape((1,) * x.ndim)
    return expand_sigma(s, x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=s.dtype))


def to_vp(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Sigma coordinates -> VP coordinates: ``x / sqrt(1 + sigma^2)`` (sigma scalar or ``(B,)``)."""
    return x * (1 + _expand(sigma, x) ** 2).rsqrt().to(x.dtype)


def from_vp(x_vp: Tensor, sigma: Tensor | float) -> Tensor:
    """VP coordinates -> sigma coordinates: ``x_vp * sqrt(1 + sigma^2)``."""
    return x_vp * (1 + _expand(sigma, x_vp) ** 2).sqrt().to(x_vp.dtype)


def q_posterior(
    x0: Tensor, x_t_vp: Tensor, sigma_t: Tensor | float, sigma_s: Tensor | float
) -> tuple[Tensor, Tensor]:
    """``q(x_s | x_t, x0)`` in VP coordinates: ``(mean, variance)``; the variance is beta_tilde,
    broadcastable to ``x0`` (``(B, 1, ..., 1)`` or ``(1, ..., 1)``). Sigmas are scalars or ``(B,)``."""
    st = ddpm_step(_expand(sigma_t, x0), _expand(sigma_s, x0))
    mean = st.coef_x0.to(x0.dtype) * x0 + st.coef_xt.to(x0.dtype) * x_t_vp
    return mean, st.beta_tilde.to(x0.dtype)


def log_variance_bounds(
    sigma_t: Tensor | float, sigma_s: Tensor | float, sigma_above: Tensor | float | None = None
) -> tuple[Tensor, Tensor]:
    """``(log beta_tilde, log beta)`` of the step (VP coordinates, float64, broadcast shape).

    Where ``sigma_s == 0`` beta_tilde is replaced by that of the step ``sigma_above -> sigma_t``
    (IDDPM's clipping); ``sigma_above=None`` means inf, which gives beta_t there.
    """
    st = ddpm_step(sigma_t, sigma_s)
    above = math.inf if sigma_above is None else sigma_above
    above = _real_tensor(above, st.beta.device, st.beta.dtype)
    clip = ddpm_step(above, sigma_t).beta_tilde
    ss = _real_tensor(sigma_s, st.beta.device, st.beta.dtype)
    small = torch.where(ss == 0, clip, st.beta_tilde)
    return small.log(), st.beta.log()


def learned_log_variance(
    v: Tensor,
    sigma_t: Tensor | float,
    sigma_s: Tensor | float,
    sigma_above: Tensor | float | None = None,
) -> Tensor:
    """IDDPM eq. 15: ``frac log beta + (1 - frac) log beta_tilde``, ``frac = (v + 1) / 2`` (not
    clamped, as in IDDPM). Sigmas are scalars or ``(B,)``; the result has ``v``'s shape and dtype."""
    lo, hi = log_variance_bounds(_expand(sigma_t, v), _expand(sigma_s, v), _above(sigma_above, v))
    frac = (v + 1) / 2
    return frac * hi.to(v.dtype) + (1 - frac) * lo.to(v.dtype)


def _above(sigma_above: Tensor | float | None, x: Tensor) -> Tensor:
    return _expand(math.inf if sigma_above is None else sigma_above, x)


def _check(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(options)}")


def _require_variance_denoiser(denoiser) -> None:
    if not hasattr(denoiser, "predict"):  # a VarianceDenoiser or a guidance wrapper of one
        raise ValueError(
            "variance='learned' needs a VarianceDenoiser (a net with 2C output channels, e.g. DiT "
            f"with learn_sigma=True), got {type(denoiser).__name__}; use variance='large' or 'small'"
        )


def _predict(denoiser, x: Tensor, sigma: Tensor, cond, variance: str):
    """``(x0_hat, v)``; ``v`` is None for fixed variances."""
    if variance != "learned":
        return denoiser(x, sigma, cond), None
    _require_variance_denoiser(denoiser)
    return denoiser.predict(x, sigma, cond)


def _reverse_log_variance(variance, v, lo: Tensor, hi: Tensor, like: Tensor):
    """log Sigma_t (VP) for the chosen variance, in ``like``'s dtype."""
    if variance == "learned":
        frac = (v + 1) / 2
        return frac * hi.to(like.dtype) + (1 - frac) * lo.to(like.dtype)
    return (hi if variance == "large" else lo).to(like.dtype).expand_as(like)


# ------------------------------------------------------------------------------------------------
# Densities


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` in nats (arguments broadcast)."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(t) for t in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1
    )


def _log1mexp(z: Tensor) -> Tensor:
    """``log(1 - e^z)`` for ``z < 0`` (clamped just below 0 so that it stays finite)."""
    return torch.log(-torch.expm1(z.clamp(max=-torch.finfo(z.dtype).tiny)))


def discretized_gaussian_log_likelihood(
    x0: Tensor, mean: Tensor, log_scale: Tensor, num_bins: int = 256
) -> Tensor:
    """Elementwise ``log P(bin of x0)`` in nats under ``N(mean, e^(2 log_scale))`` for data in
    [-1, 1] on ``num_bins`` levels (DDPM/IDDPM: bin width ``2 / (num_bins - 1)``, the edge bins
    extend to -inf and +inf, so the probabilities of the bins sum to 1).

    Computed with ``log_ndtr`` in the tail that keeps precision (no 1e-12 floor as in IDDPM).
    """
    half = 1.0 / (num_bins - 1)
    inv = torch.exp(-log_scale)
    a = (x0 - mean - half) * inv  # lower edge, standardised
    b = (x0 - mean + half) * inv  # upper edge
    lndtr = torch.special.log_ndtr
    la, lb, lma, lmb = lndtr(a), lndtr(b), lndtr(-a), lndtr(-b)
    # log(Phi(b) - Phi(a)): from the lower tail when the bin is left of the mean, else the upper
    inner = torch.where(a > 0, lma + _log1mexp(lmb - lma), lb + _log1mexp(la - lb))
    return torch.where(x0 < -1 + half, lb, torch.where(x0 > 1 - half, lma, inner))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise ``log N(x; mean, e^(2 log_scale))`` in nats (a density, for continuous data)."""
    return (
        -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2
    )


# ------------------------------------------------------------------------------------------------
# Variational bound


def _vlb_elementwise(
    x0: Tensor,
    x_t: Tensor,
    x0_hat: Tensor,
    v: Tensor | None,
    sigma_t: Tensor,
    sigma_s: Tensor,
    sigma_above: Tensor,
    variance: str,
    decoder: str,
) -> Tensor:
    """Elementwise nats: ``KL(q(x_s|x_t,x0) || p(x_s|x_t))`` where ``sigma_s > 0``, the decoder's
    ``-log p(x0|x_t)`` where ``sigma_s == 0``. Sigmas are ``(B, 1, ..., 1)`` float64; ``x_t`` is in
    sigma coordinates."""
    dt = x0.dtype
    st = ddpm_step(sigma_t, sigma_s)
    lo, hi = log_variance_bounds(sigma_t, sigma_s, sigma_above)
    logvar_p = _reverse_log_variance(variance, v, lo, hi, x0)
    x_t_vp = x_t * st.abar_t.sqrt().to(dt)
    c0, ct = st.coef_x0.to(dt), st.coef_xt.to(dt)
    first = sigma_s == 0  # (B, 1, ..., 1)
    logvar_q = torch.where(first, 1.0, st.beta_tilde).log().to(dt)  # finite where unused
    kl = normal_kl(c0 * x0 + ct * x_t_vp, logvar_q, c0 * x0_hat + ct * x_t_vp, logvar_p)
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * logvar_p)
    else:
        nll = -gaussian_log_likelihood(x0, x0_hat, 0.5 * logvar_p)
    return torch.where(first, nll, kl)


def vlb_terms(
    denoiser,
    x0: Tensor,
    sigma_t: Tensor | float,
    sigma_s: Tensor | float,
    cond: Condition | None = None,
    *,
    variance: Variance = "learned",
    sigma_above: Tensor | float | None = None,
    decoder: Decoder = "discretized",
    generator: Generators = None,
    noise: Tensor | None = None,
) -> Tensor:
    """One term of the VLB per sample, ``(B,)`` nats summed over dimensions.

    ``x_t = x0 + sigma_t * noise`` (``noise`` drawn with ``generator`` unless given); the term is
    ``KL(q(x_s|x_t,x0) || p(x_s|x_t))`` for ``sigma_s > 0`` and the decoder NLL ``-log p(x0|x_t)``
    for ``sigma_s == 0``. Sigmas are scalars or ``(B,)`` with ``sigma_t > sigma_s >= 0``;
    ``sigma_above`` (the level above sigma_t) only sets beta_tilde at the decoder (module docstring).
    Fixed variances work with any denoiser; ``learned`` needs a :class:`VarianceDenoiser`.
    """
    _check("variance", variance, VARIANCES)
    _check("decoder", decoder, DECODERS)
    st, ss = _expand(sigma_t, x0), _expand(sigma_s, x0)
    if bool((ss < 0).any()) or bool((st <= ss).any()):
        raise ValueError("vlb_terms: need sigma_t > sigma_s >= 0")
    if noise is None:
        noise = randn_like(x0, generator)
    x_t = x0 + st.to(x0.dtype) * noise
    sigma_vec = st.reshape(-1).to(x0.dtype).expand(x0.shape[0]).contiguous()  # (B,)
    x0_hat, v = _predict(denoiser, x_t, sigma_vec, cond, variance)
    terms = _vlb_elementwise(x0, x_t, x0_hat, v, st, ss, _above(sigma_above, x0), variance, decoder)
    return terms.flatten(1).sum(1)


def prior_kl(x0: Tensor, sigma_max: float) -> Tensor:
    """``KL(q(x_T|x0) || N(0, I))`` in VP coordinates, ``(B,)`` nats summed over dimensions."""
    abar = 1 / (1 + sigma_max**2)
    mean = math.sqrt(abar) * x0
    logvar = torch.full_like(x0, math.log1p(-abar))
    return normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


@torch.no_grad()
def vlb_bits_per_dim(
    denoiser,
    x0: Tensor,
    schedule: DiscreteSchedule | None,
    cond: Condition | None = None,
    *,
    variance: Variance = "learned",
    sigmas: Tensor | list[float] | None = None,
    decoder: Decoder = "discretized",
    generator: Generators = None,
) -> Tensor:
    """The full variational bound ``-ELBO`` of ``x0`` in bits per dimension, ``(B,)``:
    prior KL at ``sigmas[0]`` + the KL of every step + the decoder NLL (IDDPM ``calc_bpd_loop``).

    The grid is all T levels of ``schedule`` or a descending ``sigmas`` ending in 0 (e.g.
    ``schedule.discretize(n)``), each step's betas recomputed from the kept alpha-bars (IDDPM's
    respacing). One fresh ``x_t`` per step, drawn with ``generator``.
    """
    if sigmas is None:
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError("vlb_bits_per_dim: pass a DiscreteSchedule or an explicit sigmas grid")
        sigmas = torch.cat([schedule.sigmas_table.flip(0), torch.zeros(1, dtype=torch.float64)])
    sig = _sigma_list(sigmas)
    if sig[-1] != 0:
        raise ValueError("vlb_bits_per_dim: sigmas must end in 0 (the decoder step)")
    generator = ensure_generator(generator)
    total = prior_kl(x0, sig[0])
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        above = sig[i - 1] if i > 0 else math.inf
        total = total + vlb_terms(
            denoiser,
            x0,
            s,
            s_next,
            cond,
            variance=variance,
            sigma_above=above,
            decoder=decoder,
            generator=generator,
        )
    return total / (x0[0].numel() * math.log(2))


def hybrid_loss(
    denoiser: VarianceDenoiser,
    x0: Tensor,
    schedule: DiscreteSchedule,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
    vlb_weight: float = 0.001,
    weighting: Weighting = "native",
    min_snr_gamma: float = 5.0,
    decoder: Decoder = "discretized",
    generator: Generators = None,
    precond: Preconditioning | None = None,
) -> Tensor:
    """IDDPM's ``L_hybrid = L_simple + vlb_weight * L_vlb`` (scalar).

    ``L_simple`` is :func:`diffusion.losses.denoising_loss` with the same draws (one generator on
    the CPU: the timestep uniform over the T steps, then the noise), i.e. the eps-MSE for eps
    prediction with ``weighting="native"``. ``L_vlb = T * L_t`` with ``L_t`` the masked mean over
    elements of the step's VLB term in bits (KL, or decoder NLL at the first step), computed with
    a stop-gradient on ``x0_hat`` so that only ``v`` learns from it; the prior term (constant) is
    left out. ``vlb_weight = 0.001`` reproduces IDDPM's objective. ``mask`` as in denoising_loss.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError("hybrid_loss needs a DiscreteSchedule (the VLB is over its T steps)")
    if isinstance(denoiser, Denoiser) and not isinstance(denoiser, VarianceDenoiser):
        raise ValueError("hybrid_loss needs a VarianceDenoiser (a net with 2C output channels)")
    _check("decoder", decoder, DECODERS)
    generator = ensure_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise ValueError("hybrid_loss: generator must be one torch.Generator (or None for seed 0)")
    b = x0.shape[0]
    sigma = schedule.sample_training_sigma(b, generator)  # (B,) on the CPU
    table = schedule.sigmas_table
    k = schedule.timestep(sigma.double()).round().long()  # (B,) the drawn step
    if not torch.allclose(table[k], sigma.double(), rtol=1e-5, atol=0.0):
        raise ValueError("hybrid_loss: the schedule's training sigmas must lie on its table")
    sigma = sigma.to(device=x0.device, dtype=x0.dtype)
    s = expand_sigma(sigma, x0)
    noisy = x0 + s * randn_like(x0, generator)
    pred, v = denoiser(noisy, sigma, cond, return_variance=True)
    p = precond if precond is not None else denoiser.precond
    w = loss_weight(s, weighting, p.prediction, p.sigma_data, min_snr_gamma)
    dt = torch.promote_types(pred.dtype, torch.float32)
    mse = masked_mean(w.to(dt) * (pred.to(dt) - x0.to(dt)) ** 2, mask)
    if vlb_weight == 0:
        return mse
    zero = torch.zeros(1, dtype=table.dtype)
    s_t = table[k]
    s_s = torch.cat([zero, table])[k]  # table[k - 1], 0 at the first step
    s_above = table[(k + 1).clamp(max=len(table) - 1)]
    terms = _vlb_elementwise(
        x0.to(dt),
        noisy.to(dt),
        pred.detach().to(dt),  # stop-gradient: the VLB trains the variance only
        v.to(dt),
        _expand(s_t.to(x0.device), x0),
        _expand(s_s.to(x0.device), x0),
        _expand(s_above.to(x0.device), x0),
        "learned",
        decoder,
    )
    vlb = masked_mean(terms, mask) / math.log(2) * schedule.num_timesteps
    return mse + vlb_weight * vlb


# ------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample_iddpm(
    denoiser, x, sigmas, cond=None, *, generator=None, callback=None, variance: Variance = "learned"
):
    """Ancestral DDPM sampling with IDDPM's variances over descending ``sigmas`` (ending in 0).

    Each step draws ``x_s ~ N(posterior mean with x0_hat, Sigma_t)``, in sigma coordinates
    ``x0_hat + (s^2 / t^2) (x - x0_hat) + sqrt(Sigma_t / abar_s) z``; the last step to 0 returns
    ``x0_hat`` (no noise). ``variance="small"`` is ``sample_ddim(eta=1)``; ``"learned"`` needs a
    :class:`VarianceDenoiser`. Same signature and callback as :mod:`diffusion.samplers`.
    """
    _check("variance", variance, VARIANCES)
    if variance == "learned":
        _require_variance_denoiser(denoiser)
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        if variance == "learned":
            denoised, v = denoiser.predict(x, x.new_full((x.shape[0],), s), cond)
        else:
            denoised, v = _denoise(denoiser, x, s, cond), None
        if s_next == 0:
            x = denoised
        else:
            x = denoised + (s_next**2 / s**2) * (x - denoised)
            st = ddpm_step(s, s_next)
            to_sigma = float(1 + s_next**2)  # VP variance -> sigma-coordinate variance
            if variance == "learned":
                logvar = _reverse_log_variance(variance, v, st.beta_tilde.log(), st.beta.log(), x)
                std = (logvar + math.log(to_sigma)).mul(0.5).exp()
            else:
                var = st.beta if variance == "large" else st.beta_tilde
                std = math.sqrt(float(var) * to_sigma)
            x = x + std * randn_like(x, generator)
        x = _report(callback, i, s, x, denoised, s_next)
    return x


# registered here (diffusion/__init__ imports this module): ``--sampler iddpm`` (learned variances
# need ``model.kind: learned_variance``; ``options: {variance: small | large}`` works for any model)
SAMPLERS["iddpm"] = SamplerSpec(sample_iddpm, True, _one)
