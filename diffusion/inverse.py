"""Solving inverse problems ``y = A x (+ noise)`` with any trained denoiser and any sampler.

Every method wraps a denoiser ``D(x, sigma, cond)`` and a registered sampler; ``A`` is a linear
operator from :mod:`diffusion.operators` (``A(x)``, ``A.adjoint``, ``A.pinv``). Coordinates are
the samplers' ``x = x0 + sigma n``.

* **Hard data consistency / replacement** (``consistency_hook``): after every sampler step to
  level ``s``, ``x <- x + A^+(y_s - A x)`` with ``y_s = y + s A n`` the measurement noised to the
  current level. For a mask ``A^+ = A`` and this is the replacement method (Song et al. 2021,
  sec. 5; RePaint's known-region update); for an undersampled Fourier operator it replaces the
  measured k-space (score-MRI, Chung & Ye 2022) and is used inside the predictor-corrector
  sampler; for average-pool downsampling ``A^+`` is the nearest upsample (ILVR/DDNM style); for
  operators without a closed form (Radon, blur) ``A^+`` is computed by CGLS (``cgls_iters``
  conjugate-gradient iterations, the projection of DiffusionMBIR / DDS-style solvers).
* **RePaint resampling** (Lugmayr et al. 2022, sec. 4.2): the sigma grid is walked down
  ``jump_length`` steps at a time; each block is re-noised back up (``x + sqrt(s_up^2 - s^2) n``,
  the forward process) and denoised again, ``resample - 1`` times, so the generated region
  harmonises with the known one. The walk is RePaint's ``get_schedule_jump``; each descending run
  goes through the chosen sampler with the replacement hook.
* **DPS** (Chung et al. 2023, algorithm 1): ``x0_hat = D(x_i, s_i)`` is evaluated with gradients,
  and after the sampler's step ``x_{i+1} <- x_{i+1} - zeta grad_{x_i} ||y - A x0_hat||``. Chung's
  step ``zeta`` lives in VP coordinates ``x_vp = x / sqrt(1 + s^2)``; in ours the same update is
  ``zeta sqrt(1 + s_{i+1}^2) sqrt(1 + s_i^2) grad_{x_i}``. The gradient of the norm (not its square)
  is the paper's ``zeta / ||y - A x0_hat||`` rule. With a two-evaluation sampler the gradient of
  the step's last evaluation is used; DDPM (ancestral) is the paper's sampler.

* **DiffPIR** (Zhu et al. 2023, algorithm 1), one evaluation per step, no sampler: at each level
  ``s_i`` the prediction ``x0_hat = D(x_i, s_i)`` is moved to the proximal point of the data term,
  ``z = argmin ||y - A z||^2 + rho_i ||z - x0_hat||^2`` with ``rho_i = lam sigma_y^2 / s_i^2``
  (``sigma_y``: the measurement noise, at least 1e-3), solved by conjugate gradients on
  ``(A^T A + rho I) z = A^T y + rho x0_hat`` from ``x0_hat`` (exact in two iterations for masks
  and k-space masks); then ``x_{i+1} = z + s_{i+1} (sqrt(1 - mix) eps_hat + sqrt(mix) n)`` with
  ``eps_hat = (x_i - z) / s_i``: ``mix`` is the paper's zeta (0: deterministic, DDIM-like).
  In our coordinates the paper's VP update is this one (``x = x0 + s n``).

``reconstruct`` draws ``members`` samples per measurement (member ``m`` of item ``b`` has its own
generator) and returns them; ``mean`` and the per-pixel ``std`` summarise them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.rng import Generators, ensure_generator, randn, randn_like
from stdiff.diffusion.samplers import DenoiserFn, get_sampler

Method = Literal["replacement", "repaint", "dps", "consistency", "diffpir"]
METHODS: tuple[str, ...] = ("replacement", "repaint", "dps", "consistency", "diffpir")


class CountingDenoiser:
    """A denoiser that counts its evaluations (batched calls), for honest cost figures."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x: Tensor, sigma: Tensor, cond: Condition | None) -> Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def cgls_pinv(operator, r: Tensor, iters: int = 30) -> Tensor:
    """``A^+ r`` by CGLS (conjugate gradients on ``A^T A d = A^T r`` from ``d = 0``), per batch
    element: the minimum-norm least-squares solution, for operators without a closed-form
    pseudo-inverse (Radon, blur). ``iters`` bounds the work; it stops early when converged."""
    b = r.shape[0]

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).flatten(1).sum(1).reshape(b, *([1] * (u.ndim - 1)))

    s = operator.adjoint(r)  # A^T residual
    d, p, gamma = torch.zeros_like(s), s.clone(), dot(s, s)
    for _ in range(iters):
        q = operator(p)
        alpha = gamma / dot(q, q).clamp_min(1e-30)
        d, r = d + alpha * p, r - alpha * q
        s = operator.adjoint(r)
        gamma_new = dot(s, s)
        if float(gamma_new.max()) <= 1e-12 * float(dot(d, d).max() + 1e-30):
            break
        p, gamma = s + (gamma_new / gamma.clamp_min(1e-30)) * p, gamma_new
    return d


def data_prox(operator, y: Tensor, x0: Tensor, rho: float, iters: int = 30) -> Tensor:
    """``argmin_z ||y - A z||^2 + rho ||z - x0||^2`` per batch element, by conjugate gradients on
    ``(A^T A + rho I) z = A^T y + rho x0`` started at ``x0`` (DiffPIR's data step)."""
    b = x0.shape[0]

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).flatten(1).sum(1).reshape(b, *([1] * (u.ndim - 1)))

    def normal(v: Tensor) -> Tensor:
        return operator.adjoint(operator(v)) + rho * v

    z = x0.clone()
    r = operator.adjoint(y) + rho * x0 - normal(z)
    p, gamma = r.clone(), dot(r, r)
    scale = float(dot(x0, x0).max()) + 1e-30
    for _ in range(iters):
        if float(gamma.max()) <= 1e-14 * scale:
            break
        q = normal(p)
        alpha = gamma / dot(p, q).clamp_min(1e-30)
        z, r = z + alpha * p, r - alpha * q
        gamma_new = dot(r, r)
        p, gamma = r + (gamma_new / gamma.clamp_min(1e-30)) * p, gamma_new
    return z


def _diffpir(counter, operator, y, x, sig, cfg, cond, generator) -> Tensor:
    """The DiffPIR loop (see the module docstring) from ``x`` at ``sig[0]``."""
    sigma_y = max(cfg.sigma_y, 1e-3)
    for s, s_next in itertools.pairwise(sig):
        x0 = counter(x, torch.full((x.shape[0],), s, device=x.device, dtype=x.dtype), cond)
        z = data_prox(operator, y, x0.to(x.dtype), cfg.lam * sigma_y**2 / s**2, cfg.cgls_iters)
        if s_next == 0:
            return z
        eps = (x - z) / s
        x = z + s_next * (
            math.sqrt(1 - cfg.mix) * eps + math.sqrt(cfg.mix) * randn_like(x, generator)
        )
    return x


def _pinv(operator, r: Tensor, iters: int) -> Tensor:
    try:
        return operator.pinv(r)
    except NotImplementedError:
        return cgls_pinv(operator, r, iters)


def consistency_hook(
    operator, y: Tensor, generator: Generators, iters: int = 30
) -> Callable[[dict], Tensor]:
    """The sampler callback ``x <- x + A^+(y + s_next A n - A x)`` (see the module docstring);
    ``A^+`` is the operator's own pseudo-inverse or ``iters`` CGLS iterations."""

    def hook(info: dict[str, Any]) -> Tensor:
        x, s = info["x"], float(info["sigma_next"])
        y_s = y if s == 0 else y + s * operator(randn_like(x, generator))
        return x + _pinv(operator, y_s - operator(x), iters)

    return hook


def repaint_walk(steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """RePaint's time walk over sigma-grid positions ``0 .. steps`` (0 = noisiest, ``steps`` = 0).

    RePaint's ``get_schedule_jump`` in grid positions: every ``jump_length`` steps (counted from
    the clean end, except the last block) the walk goes back up ``jump_length`` positions,
    ``resample - 1`` times. ``resample = 1`` is the plain descending walk.
    """
    if steps < 1 or jump_length < 1 or resample < 1:
        raise ValueError("repaint: steps, jump_length and resample must be at least 1")
    jumps = {t: resample - 1 for t in range(0, steps - jump_length, jump_length)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)  # RePaint's t: steps - 1 (noisiest) .. 0, then -1 = clean
    return [steps - 1 - t for t in ts]


def _runs(walk: Sequence[int]) -> list[tuple[str, int, int]]:
    """Split a walk into ("down", a, b) sampler runs and ("up", a, b) re-noising moves."""
    out: list[tuple[str, int, int]] = []
    for a, b in itertools.pairwise(walk):
        kind = "down" if b > a else "up"
        if out and out[-1][0] == kind and out[-1][2] == a:
            out[-1] = (kind, out[-1][1], b)
        else:
            out.append((kind, a, b))
    return out


class DPSGuidance:
    """DPS as a (denoiser, hook) pair: the denoiser records ``grad_x ||y - A D(x)||``, the hook
    applies Chung's step after the sampler's update (module docstring)."""

    def __init__(self, denoiser: DenoiserFn, operator, y: Tensor, zeta: float) -> None:
        if zeta < 0:
            raise ValueError(f"dps: zeta must be non-negative, got {zeta}")
        self.denoiser, self.operator, self.y, self.zeta = denoiser, operator, y, zeta
        self.grad: Tensor | None = None
        self.sigma = 0.0
        self.residual: Tensor | None = None  # (B,) ||y - A x0_hat|| of the last evaluation

    def __call__(self, x: Tensor, sigma: Tensor, cond: Condition | None) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = self.denoiser(xg, sigma, cond)
            r = (self.y - self.operator(d.float())).flatten(1).norm(dim=1)  # (B,)
            (self.grad,) = torch.autograd.grad(r.sum(), xg)
        self.sigma, self.residual = float(sigma.reshape(-1)[0]), r.detach()
        return d.detach()

    def hook(self, info: dict[str, Any]) -> Tensor:
        x, s_next = info["x"], float(info["sigma_next"])
        if self.grad is None or s_next == 0:
            return x
        scale = self.zeta * math.sqrt(1 + s_next**2) * math.sqrt(1 + self.sigma**2)
        return x - scale * self.grad.to(x.dtype)


@dataclass(frozen=True)
class InverseConfig:
    """A reconstruction method and its sampler.

    method: ``replacement`` / ``consistency`` (the same hard data-consistency hook; the names say
    what it does for masks and for k-space), ``repaint`` (with ``jump_length`` and ``resample``)
    or ``dps`` (with ``zeta``) or ``diffpir`` (with ``lam``, ``mix`` and ``sigma_y``, the
    measurement noise; it has its own one-evaluation step and ignores the sampler).
    sampler/options: a registered sampler and its options."""

    method: Method = "repaint"
    sampler: str = "ddpm"
    options: dict[str, Any] | None = None
    jump_length: int = 10
    resample: int = 10
    zeta: float = 1.0
    cgls_iters: int = 30
    lam: float = 7.0
    mix: float = 0.3
    sigma_y: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not known; choose one of {list(METHODS)}")
        get_sampler(self.sampler)
        if self.method == "repaint":
            repaint_walk(1, self.jump_length, self.resample)  # validates the two numbers
        if not (self.lam > 0 and 0.0 <= self.mix <= 1.0 and self.sigma_y >= 0):
            raise ValueError(
                f"diffpir needs lam > 0, mix in [0, 1] and sigma_y >= 0, got {self.lam}, "
                f"{self.mix} and {self.sigma_y}"
            )


@torch.no_grad()
def solve(
    denoiser: DenoiserFn,
    operator,
    y: Tensor,
    shape: Sequence[int],
    sigmas: Sequence[float] | Tensor,
    cfg: InverseConfig,
    cond: Condition | None = None,
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, int]:
    """One batch of reconstructions ``(B, ...)`` of ``y`` and the number of denoiser evaluations.

    ``y`` is ``A`` applied to the ``(B, ...)`` truths (plus measurement noise); ``sigmas`` the
    decreasing grid ending at 0; ``generator`` one per batch element or one for all.
    """
    sig = [float(s) for s in sigmas]
    fn = get_sampler(cfg.sampler).fn
    opts = dict(cfg.options or {})
    generator = ensure_generator(generator)
    counter = CountingDenoiser(denoiser)
    x = randn(shape, generator, device=device) * sig[0]
    if cfg.method == "diffpir":
        return _diffpir(counter, operator, y, x, sig, cfg, cond, generator), counter.calls
    if cfg.method == "dps":
        dps = DPSGuidance(counter, operator, y, cfg.zeta)
        x = fn(dps, x, sig, cond, generator=generator, callback=dps.hook, **opts)
        return x, counter.calls
    hook = consistency_hook(operator, y, generator, cfg.cgls_iters)
    if cfg.method != "repaint":
        return fn(counter, x, sig, cond, generator=generator, callback=hook, **opts), counter.calls
    for kind, a, b in _runs(repaint_walk(len(sig) - 1, cfg.jump_length, cfg.resample)):
        if kind == "down":
            x = fn(counter, x, sig[a : b + 1], cond, generator=generator, callback=hook, **opts)
        else:  # forward process from sig[a] up to sig[b] (b < a: noisier)
            x = x + math.sqrt(sig[b] ** 2 - sig[a] ** 2) * randn_like(x, generator)
    return x, counter.calls


def summarize(samples: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, M, ...)`` members -> per-pixel ``(mean, std)``, each ``(B, ...)``."""
    return samples.mean(1), samples.std(1, correction=1 if samples.shape[1] > 1 else 0)
