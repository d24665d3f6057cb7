"""The denoising training loss, written once in x0-space with a weighting lambda(sigma).

    L = E_{sigma, n} [ sum(mask * lambda(sigma) * (D(x0 + sigma n, sigma) - x0)^2) / sum(mask) ]

Each classic objective is a weighting of that one loss (SNR = 1/sigma^2 for unit-variance data):

    ``native`` : the prediction type's own MSE -- eps: SNR (DDPM's L_simple), v: SNR + 1/sd^2 ... i.e.
                 (sigma^2 + sd^2)/(sigma sd)^2, x0: 1, edm: (sigma^2 + sd^2)/(sigma sd)^2 (EDM eq. 8).
    ``edm``    : (sigma^2 + sd^2) / (sigma sd)^2 whatever the prediction type.
    ``min_snr``: min(SNR, gamma) (Hang et al. 2023, "Min-SNR weighting", gamma = 5 by default;
                 equal to their min(SNR, gamma)/SNR on the eps loss).
    ``uniform``: 1.

The loss mask makes CSDI's rule "score only the imputation targets" first-class.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import Denoiser, Preconditioning, expand_sigma
from stdiff.diffusion.rng import Generators, ensure_generator, randn_like
from stdiff.diffusion.schedules import NoiseSchedule

Weighting = Literal["native", "edm", "min_snr", "uniform"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def loss_weight(
    sigma: Tensor, weighting: Weighting, prediction: str, sigma_data: float, gamma: float = 5.0
) -> Tensor:
    """lambda(sigma) of the x0-space loss (see module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} is not valid; choose one of {list(WEIGHTINGS)}")
    if weighting == "native":
        weighting = {"eps": "snr", "x0": "uniform"}.get(prediction, "edm")  # v, edm -> edm form
    snr = 1 / sigma**2
    if weighting == "snr":
        return snr
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if weighting == "min_snr":
        return snr.clamp(max=gamma)
    return torch.ones_like(sigma)


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: NoiseSchedule,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
    weighting: Weighting = "native",
    min_snr_gamma: float = 5.0,
    generator: Generators = None,
    sigma: Tensor | None = None,
    precond: Preconditioning | None = None,
) -> Tensor:
    """Scalar denoising loss of a batch ``x0`` of shape ``(B, ...)``.

    Args:
      mask: ``(B, ...)`` with 1 where the loss counts (CSDI targets), broadcastable to ``x0``.
      sigma: ``(B,)`` noise levels; drawn from ``schedule.sample_training_sigma`` when omitted
        (with ``generator``, a single ``torch.Generator`` drawing on the CPU).
      precond: the parameterisation for the weighting; default ``denoiser.precond`` (pass it when
        ``denoiser`` is wrapped, e.g. by DistributedDataParallel or torch.compile).
    """
    b = x0.shape[0]
    generator = ensure_generator(generator)
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "denoising_loss: generator must be one torch.Generator (or None for seed 0)"
        )
    if sigma is None:
        sigma = schedule.sample_training_sigma(b, generator)
    sigma = sigma.to(device=x0.device, dtype=x0.dtype)
    s = expand_sigma(sigma, x0)
    noisy = x0 + s * randn_like(x0, generator)
    pred = denoiser(noisy, sigma, cond)
    p = precond if precond is not None else denoiser.precond
    w = loss_weight(s, weighting, p.prediction, p.sigma_data, min_snr_gamma)
    dt = torch.promote_types(pred.dtype, torch.float32)  # bf16 autocast outputs -> float32
    return masked_mean(w.to(dt) * (pred.to(dt) - x0.to(dt)) ** 2, mask)


def regression_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: float,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """The deterministic baseline of the same backbone: the denoiser evaluated on a zero input at
    one noise level ``sigma`` (the schedule's largest), trained with the plain MSE to ``x0``. Its
    minimiser is the conditional mean ``E[x0 | cond]``, what any MSE-trained model predicts;
    :func:`regression_predict` is its forecast."""
    pred = regression_predict(denoiser, x0.shape, sigma, cond, device=x0.device, dtype=x0.dtype)
    dt = torch.promote_types(pred.dtype, torch.float32)
    return masked_mean((pred.to(dt) - x0.to(dt)) ** 2, mask)


def regression_predict(
    denoiser: Denoiser,
    shape: tuple[int, ...] | torch.Size,
    sigma: float,
    cond: Condition | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``D(0; sigma, cond)``: the regression model's prediction (no noise, no sampler)."""
    x = torch.zeros(shape, device=device, dtype=dtype)
    return denoiser(x, torch.full((shape[0],), float(sigma), device=device, dtype=dtype), cond)


def crps_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: float,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
    generator: Generators = None,
) -> Tensor:
    """A one-evaluation generator trained on the CRPS (the idea of FGN, Alet et al. 2025: a
    noise-conditioned network whose samples are scored by a proper scoring rule; here the noise
    enters as the denoiser's input at one level ``sigma``, the schedule's largest). Two members
    ``x_m = D(sigma z_m; sigma, cond)`` per target, and the fair (unbiased) CRPS estimator per
    value, averaged::

        L = 1/2 (|x_1 - x0| + |x_2 - x0|) - 1/2 |x_1 - x_2|

    whose expectation is ``CRPS(F, x0)`` for the generator's marginal ``F``: a strictly proper
    score, minimised in expectation only by the true conditional marginals. Sampled with
    ``--sampler consistency --steps 1`` (one evaluation of ``D`` at ``sigma``)."""
    b = x0.shape[0]
    gens = ensure_generator(generator)
    z = torch.cat([randn_like(x0, gens), randn_like(x0, gens)])
    s = torch.full((2 * b,), float(sigma), device=x0.device, dtype=x0.dtype)
    two = None if cond is None else Condition.cat([cond, cond], [b, b])
    pred = denoiser(float(sigma) * z, s, two)
    return fair_crps(pred[:b], pred[b:], x0, mask)


def fair_crps(x1: Tensor, x2: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """The fair CRPS of the two-member ensemble ``{x1, x2}`` against ``y``, per value, averaged
    where ``mask`` is 1: ``1/2 (|x1 - y| + |x2 - y|) - 1/2 |x1 - x2|`` (in float32 at least)."""
    dt = torch.promote_types(x1.dtype, torch.float32)
    x1, x2, y = x1.to(dt), x2.to(dt), y.to(dt)
    return masked_mean(0.5 * ((x1 - y).abs() + (x2 - y).abs() - (x1 - x2).abs()), mask)


def masked_mean(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err`` where ``mask`` is 1 (``mask`` broadcast to ``err``), or over all of it."""
    if mask is None:
        return err.mean()
    m = torch.broadcast_to(mask.to(err.dtype), err.shape)
    return (err * m).sum() / m.sum().clamp_min(1)
