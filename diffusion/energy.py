"""Energy-parameterised denoisers and Metropolis-adjusted Langevin sampling.

A denoiser that is the gradient of a scalar energy has an unnormalised density at every noise
level, so samplers can use Metropolis-Hastings corrections and densities can be compared
(Salimans & Ho 2021, "Should EBMs model the energy or the score?"). With ``f(x, sigma, cond)``
the usual preconditioned output of an ordinary denoiser network (:class:`~diffusion.precond.Denoiser`)

    E(x, sigma) = ||x - f(x, sigma)||^2 / (2 sigma^2)           (summed over non-batch dims)
    log p_sigma(x) = -E(x, sigma) + const(sigma)
    D(x, sigma) = x + sigma^2 score = x - sigma^2 grad_x E      (Tweedie; x = x0 + sigma n)

so ``D = x - (I - df/dx)^T (x - f)``; ``f = D`` only where ``df/dx`` vanishes. It trains with the
ordinary :func:`~diffusion.losses.denoising_loss` (double backpropagation).

Gaussian data ``N(0, c^2 I)`` (the per-dimension case is identical with a ``c_i`` each):
``E = ||x||^2 / (2 (c^2 + sigma^2))`` is represented exactly by ``f = a(sigma) x`` with
``a = 1 - sigma / sqrt(c^2 + sigma^2)`` (``1 - a`` must equal ``sigma / sqrt(c^2 + sigma^2)``;
the root ``1 + ...`` works too). Under EDM preconditioning with ``sigma_data = c`` the network
output is then ``F(x_in) = -(sqrt(c^2 + sigma^2) - sigma) / c * x_in``: a coefficient in
``[-1, 0)`` at every sigma, so the energy parameterisation is well conditioned for this case.

Sampling (:func:`sample_annealed_mala`) anneals over the noise levels like the other samplers in
:mod:`diffusion.samplers`: a DDIM step (eta=0: Euler on the probability-flow ODE; eta=1: DDPM
ancestral) from sigma to sigma_next, then MALA corrector steps that leave ``p_{sigma_next}``
exactly invariant (:func:`mala_step`).

Autograd: the gradient is taken inside ``torch.enable_grad()``, so the denoiser works under
``torch.no_grad()`` (then detached, no graph kept) but not under ``torch.inference_mode()``.
The network must treat batch elements independently (no train-mode batch norm): ``grad_x``
of the summed energy is taken as the per-sample gradient.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import Denoiser, expand_sigma
from stdiff.diffusion.rng import Generators, ensure_generator, randn, randn_like
from stdiff.diffusion.samplers import (
    SAMPLERS,
    Callback,
    SamplerSpec,
    _report,
    _sigma_list,
    _two,
    ancestral_step,
)


class EnergyDenoiser(Denoiser):
    """A :class:`Denoiser` whose output is ``x - sigma^2 grad_x E`` (see the module docstring).

    Same constructor as :class:`Denoiser`; ``net`` is an ordinary denoiser network (output shaped
    like its input). ``forward`` keeps the graph (``create_graph=True``: second derivatives for
    training and for the likelihood's divergence) exactly when grad mode is on at the call; then
    the output is differentiable w.r.t. the caller's ``x`` when it requires grad. Under
    ``torch.no_grad()`` the output is detached. Energies are computed in (at least) float32, so
    bf16 autocast affects only the network.
    """

    def preconditioned(
        self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None
    ) -> Tensor:
        """``f(x, sigma, cond)``: the plain preconditioned network output (``Denoiser.forward``)."""
        return super().forward(x, sigma, cond)

    def energy(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        """``E = ||x - f||^2 / (2 sigma^2)`` per sample, shape ``(B,)``, float32 or float64."""
        f = self.preconditioned(x, sigma, cond)
        dt = torch.promote_types(x.dtype, torch.float32)
        r = (x.to(dt) - f.to(dt)).flatten(1)
        s = expand_sigma(sigma, r).reshape(-1)
        return r.pow(2).sum(1) / (2 * s**2)

    def log_density(
        self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None
    ) -> Tensor:
        """Unnormalised ``log p_sigma(x) = -E(x, sigma)``, shape ``(B,)``."""
        return -self.energy(x, sigma, cond)

    def energy_and_grad(
        self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(E (B,), grad_x E (x.shape))`` with one forward and one backward pass.

        With grad mode on both keep their graph (to ``x`` itself when it requires grad, and to
        the parameters); with grad mode off both are detached.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "EnergyDenoiser needs autograd: call it under torch.no_grad(), "
                "not torch.inference_mode()"
            )
        track = torch.is_grad_enabled()
        # second derivatives (track) need attention's math kernel: the fused CPU / flash kernels
        # have no double backward
        kernels = sdpa_kernel(SDPBackend.MATH) if track else contextlib.nullcontext()
        with torch.enable_grad(), kernels:
            xi = x if track and x.requires_grad else x.detach().requires_grad_(True)
            e = self.energy(xi, sigma, cond)
            (g,) = torch.autograd.grad(
                e.sum(), xi, create_graph=track, allow_unused=True, materialize_grads=True
            )
        return (e, g) if track else (e.detach(), g.detach())

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        _, g = self.energy_and_grad(x, sigma, cond)
        return x - expand_sigma(sigma, x) ** 2 * g.to(x.dtype)


def _full(x: Tensor, sigma: float) -> Tensor:
    return x.new_full((x.shape[0],), sigma)


def _move(
    denoiser: EnergyDenoiser,
    x: Tensor,
    e: Tensor,
    g: Tensor,
    sigma: Tensor,
    cond: Condition | None,
    tau: Tensor,
    generator: Generators,
    metropolis: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Langevin proposal from ``x`` (energy ``e``, gradient ``g``), optionally MH-corrected.

    Returns ``(x, E, grad E, acceptance probability)`` at the new state; ``tau`` broadcasts to
    ``x``. Without ``metropolis`` the proposal is always taken and the acceptance probability it
    would have had is still returned (a free diagnostic of the discretisation error).
    """
    z = randn_like(x, generator)
    y = x - tau * g + (2 * tau).sqrt() * z
    e_y, g_y = denoiser.energy_and_grad(y, sigma, cond)
    dt = e.dtype
    # log q(x | y) - log q(y | x), q(b | a) = N(b; a - tau grad E(a), 2 tau I);
    # x - y + tau grad E(y) = tau (g + g_y) - sqrt(2 tau) z, without cancellation.
    rev = (tau * (g + g_y) - (2 * tau).sqrt() * z).to(dt).flatten(1)
    t = tau.to(dt).reshape(-1)
    log_q = 0.5 * z.to(dt).flatten(1).pow(2).sum(1) - rev.pow(2).sum(1) / (4 * t)
    log_alpha = e - e_y + log_q
    prob = log_alpha.clamp(max=0).exp().nan_to_num(0.0)
    if not metropolis:
        return y, e_y, g_y, prob
    log_u = torch.special.log_ndtr(randn((x.shape[0],), generator, device=x.device, dtype=dt))
    acc = log_u < log_alpha  # NaN (e.g. an infinite proposal energy) rejects
    m = acc.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(m, y, x), torch.where(acc, e_y, e), torch.where(m, g_y, g), prob


@torch.no_grad()
def mala_step(
    denoiser: EnergyDenoiser,
    x: Tensor,
    sigma: Tensor | float,
    cond: Condition | None,
    step_size: Tensor | float,
    generator: Generators,
    *,
    metropolis: bool = True,
) -> tuple[Tensor, Tensor]:
    """One Metropolis-adjusted Langevin step targeting ``p_sigma ∝ exp(-E(., sigma, cond))``.

    Proposal ``y = x - tau grad E(x) + sqrt(2 tau) z``, accepted per batch element with
    probability ``min(1, exp(E(x) - E(y)) q(x | y) / q(y | x))``. ``step_size`` ``tau`` is a float
    or a ``(B,)`` tensor; ``sigma`` a float or ``(B,)``. The uniform for the accept test is drawn
    from ``generator`` after the proposal noise (per member with a list of generators).

    Returns ``(x_new, accept_prob)``: ``accept_prob`` ``(B,)`` is the MH acceptance probability of
    each proposal (its mean is the expected acceptance rate). ``metropolis=False`` is the
    unadjusted Langevin step (ULA); it still reports the acceptance probability it skipped.
    Two energy-and-gradient evaluations.
    """
    tau = expand_sigma(step_size, x)
    if not bool((tau > 0).all()):
        raise ValueError("mala_step: step_size must be positive")
    s = expand_sigma(sigma, x).reshape(-1)
    e, g = denoiser.energy_and_grad(x, s, cond)
    x_new, _, _, prob = _move(
        denoiser, x, e, g, s, cond, tau, ensure_generator(generator), metropolis
    )
    return x_new, prob


def _with_accept(callback: Callback, accept: Tensor | None) -> Callback:
    if callback is None:
        return None
    return lambda info: callback({**info, "accept": accept})


@torch.no_grad()
def sample_annealed_mala(
    denoiser: EnergyDenoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    cond: Condition | None = None,
    *,
    generator: Generators = None,
    callback: Callback = None,
    corrector_steps: int = 1,
    step_scale: float = 0.1,
    metropolis: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """Annealed MALA: a DDIM predictor step, then MALA correctors at each new noise level.

    Same signature and conventions as the samplers of :mod:`diffusion.samplers`. Each step from
    sigma to sigma_next: ``denoised = D(x, sigma)``, the DDIM update (``eta=0``: deterministic,
    equal to Euler on the probability-flow ODE; ``eta=1``: DDPM ancestral with fresh noise), then
    ``corrector_steps`` Metropolis-adjusted (or, with ``metropolis=False``, unadjusted) Langevin
    steps targeting ``p_{sigma_next}`` with step size ``step_scale * sigma_next^2``; none at
    sigma_next = 0, where the step returns the denoised mean.

    ``callback`` receives the usual dict plus ``accept``: the ``(B,)`` acceptance probability
    averaged over that step's corrector steps (for ULA: the probability it would have had), or
    None where no corrector ran. The predictor reuses the corrector's last energy gradient, so N
    steps ending at 0 cost ``1 + (N - 1)(1 + corrector_steps)`` energy-and-gradient evaluations
    (``N`` without correctors; ``2N - 1`` with one), unless the callback replaces ``x``.
    """
    if not hasattr(denoiser, "energy_and_grad"):
        raise ValueError(
            "sampler 'mala' needs an energy model (model.kind: energy), "
            f"got {type(denoiser).__name__}"
        )
    if corrector_steps < 0 or not step_scale > 0:
        raise ValueError(
            f"need corrector_steps >= 0 and step_scale > 0, got {corrector_steps}, {step_scale}"
        )
    sig = _sigma_list(sigmas)
    generator = ensure_generator(generator)
    cache: tuple[Tensor, Tensor] | None = None  # (x, grad E at x and the current sigma)
    for i, (s, s_next) in enumerate(itertools.pairwise(sig)):
        if cache is not None and cache[0] is x:
            g = cache[1]
        else:
            _, g = denoiser.energy_and_grad(x, _full(x, s), cond)
        cache = None
        denoised = x - s**2 * g.to(x.dtype)
        s_down, s_up = ancestral_step(s, s_next, eta)
        x = denoised + (s_down / s) * (x - denoised)
        if s_up > 0:
            x = x + s_up * randn_like(x, generator)
        accept = None
        if s_next > 0 and corrector_steps > 0:
            sn = _full(x, s_next)
            tau = expand_sigma(step_scale * s_next**2, x)
            e, g = denoiser.energy_and_grad(x, sn, cond)
            probs = []
            for _ in range(corrector_steps):
                x, e, g, p = _move(denoiser, x, e, g, sn, cond, tau, generator, metropolis)
                probs.append(p)
            accept = torch.stack(probs).mean(0)
            cache = (x, g)
        x = _report(_with_accept(callback, accept), i, s, x, denoised, s_next)
    return x


def acceptance_recorder() -> tuple[list[dict[str, Any]], Callback]:
    """``(records, callback)``: a callback for :func:`sample_annealed_mala` that appends
    ``{"sigma_next": float, "accept": float}`` (mean acceptance probability) at every step with
    correctors and leaves ``x`` unchanged."""
    records: list[dict[str, Any]] = []

    def callback(info: dict[str, Any]) -> None:
        if info.get("accept") is not None:
            records.append(
                {"sigma_next": info["sigma_next"], "accept": float(info["accept"].mean())}
            )

    return records, callback


# registered here (diffusion/__init__ imports this module): ``--sampler mala`` for energy models
SAMPLERS["mala"] = SamplerSpec(sample_annealed_mala, True, _two)
