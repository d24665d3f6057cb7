"""Distillation of a trained denoiser into a few-step sampler.

**Progressive distillation** (Salimans & Ho 2022, algorithm 2). A student initialised from the
teacher learns to take in one deterministic DDIM step (Euler on the probability-flow ODE in our
sigma coordinates) what the teacher takes in two, on the nested ``uniform_t`` grid
(``schedule.discretize(n, "uniform_t")``): a student step ``s -> s''`` is the teacher's
``s -> s' -> s''``. One DDIM step ``x'' = x + (s'' - s) (x - D) / s`` lands on the teacher's
``x''`` exactly when the student's denoised estimate is

    D~ = (s'' x - s x'') / (s'' - s)            (= x'' when s'' = 0),

the paper's eq. 8 written for ``x = x0 + s n``. The loss is ``w(s) |D_student(x, s) - D~|^2`` with
the EDM weight ``w = 1/s^2 + 1/sd^2``, a smooth form of the paper's truncated SNR ``max(SNR, 1)``.
Halving repeatedly gives 8-, 4-, 2- and 1-step students.

**Consistency distillation** (Song et al. 2023, algorithm 2). A consistency function
``f(x, s)`` maps every point of a probability-flow trajectory to its end. Parameterised as
:class:`ConsistencyDenoiser`,

    f(x, s) = c(s) x + (1 - c(s)) D_theta(x, s),    c(s) = sd^2 / ((s - s_min)^2 + sd^2),

it satisfies the boundary condition ``f(x, s_min) = x`` for any network (the paper's c_skip),
and at initialisation (``D_theta`` = the teacher, any prediction type) it is already the
teacher's one-step estimate. Training pairs adjacent levels ``s_{n+1} > s_n`` of an N-level
Karras grid: ``x_{n+1} = x0 + s_{n+1} z``, one Heun step of the teacher gives ``x^_n``, and the
loss is ``d(f(x_{n+1}, s_{n+1}), stopgrad f(x^_n, s_n)) / (s_{n+1} - s_n)`` with the pseudo-Huber
distance ``d(a, b) = sqrt(|a - b|^2 + c^2) - c``, ``c = 0.00054 sqrt(dim)`` (Song & Dhariwal
2023, "improved consistency training", which also showed that the target network works best as
the online one, ``mu = 0``, so training resumes exactly from the weights alone). Sampling is
:func:`diffusion.samplers.sample_consistency`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import masked_mean
from stdiff.diffusion.precond import Denoiser, expand_sigma
from stdiff.diffusion.rng import randn_like
from stdiff.diffusion.schedules import DiscreteSchedule, NoiseSchedule, karras_sigmas

Distance = Literal["l2", "pseudo_huber"]


class ConsistencyDenoiser(Denoiser):
    """``f(x, s) = c(s) x + (1 - c(s)) D(x, s)`` with ``c(s_min) = 1`` (see module docstring);
    ``s_min`` is the schedule's smallest noise level."""

    def boundary(self, sigma: Tensor) -> Tensor:
        sd = self.precond.sigma_data
        s_min = float(self.schedule.sigma_min) if self.schedule is not None else 0.0
        return sd**2 / ((sigma - s_min).clamp_min(0) ** 2 + sd**2)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        c = self.boundary(expand_sigma(sigma, x))
        return c * x + (1 - c) * super().forward(x, sigma, cond)


def progressive_target(
    teacher: nn.Module,
    x: Tensor,
    sigma: Tensor,
    sigma_mid: Tensor,
    sigma_next: Tensor,
    cond: Condition | None = None,
) -> Tensor:
    """The student's denoised target ``D~`` for one step ``sigma -> sigma_next`` (``(B,)``
    each) that matches two teacher DDIM steps through ``sigma_mid``."""
    s, m, n = (expand_sigma(v, x) for v in (sigma, sigma_mid, sigma_next))
    with torch.no_grad():
        d1 = teacher(x, sigma, cond)
        x_mid = x + (m - s) * (x - d1) / s
        d2 = teacher(x_mid, sigma_mid, cond)
        x_next = x_mid + (n - m) * (x_mid - d2) / m
    return torch.where(n > 0, (n * x - s * x_next) / (n - s).clamp(max=-1e-12), x_next)


def progressive_loss(
    student: nn.Module,
    teacher: nn.Module,
    x0: Tensor,
    schedule: NoiseSchedule,
    student_steps: int,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
    sigma_data: float = 0.5,
    generator: torch.Generator,
) -> Tensor:
    """One batch of progressive distillation to ``student_steps`` steps (teacher: twice as many)."""
    grid = schedule.discretize(2 * student_steps, "uniform_t").to(x0.device)  # (2N + 1,)
    i = torch.randint(0, student_steps, (x0.shape[0],), generator=generator, device="cpu")
    i = i.to(x0.device)
    s, s_mid, s_next = (grid[2 * i + k].to(x0.dtype) for k in range(3))
    x = x0 + expand_sigma(s, x0) * randn_like(x0, generator)
    target = progressive_target(teacher, x, s, s_mid, s_next, cond)
    pred = student(x, s, cond)
    w = 1 / expand_sigma(s, x0) ** 2 + 1 / sigma_data**2
    dt = torch.promote_types(pred.dtype, torch.float32)
    return masked_mean(w.to(dt) * (pred.to(dt) - target.to(dt)) ** 2, mask)


def consistency_grid(schedule: NoiseSchedule, n: int) -> Tensor:
    """The ``n`` training levels of consistency distillation, ascending (float64): a Karras grid
    over the schedule's range (rho = 7, as the paper); for a discrete schedule its own levels at
    ``n`` rounded, evenly spaced timesteps (networks trained on integer steps)."""
    if isinstance(schedule, DiscreteSchedule):
        if not 2 <= n <= schedule.num_timesteps:
            raise ValueError(f"consistency grid: need 2 <= n <= T={schedule.num_timesteps}")
        idx = torch.round(torch.linspace(0, schedule.num_timesteps - 1, n, dtype=torch.float64))
        return schedule.sigmas_table[idx.long()]
    if n < 2:
        raise ValueError(f"consistency grid: need n >= 2 levels, got {n}")
    return karras_sigmas(n, schedule.sigma_min, schedule.sigma_max)[:-1].flip(0)


def heun_step(denoiser: nn.Module, x: Tensor, s: Tensor, s_next: Tensor, cond) -> Tensor:
    """One Heun step of the probability-flow ODE from ``s`` to ``s_next`` (both ``(B,)``, > 0)."""
    sb, nb = expand_sigma(s, x), expand_sigma(s_next, x)
    d = (x - denoiser(x, s, cond)) / sb
    x_e = x + (nb - sb) * d
    d2 = (x_e - denoiser(x_e, s_next, cond)) / nb
    return x + (nb - sb) * (d + d2) / 2


def consistency_loss(
    student: nn.Module,
    teacher: nn.Module,
    x0: Tensor,
    grid: Tensor,
    cond: Condition | None = None,
    *,
    mask: Tensor | None = None,
    distance: Distance = "pseudo_huber",
    generator: torch.Generator,
) -> Tensor:
    """One batch of consistency distillation on the ascending ``grid`` (:func:`consistency_grid`)."""
    grid = grid.to(x0.device)
    n = torch.randint(0, len(grid) - 1, (x0.shape[0],), generator=generator, device="cpu")
    n = n.to(x0.device)
    s_lo, s_hi = grid[n].to(x0.dtype), grid[n + 1].to(x0.dtype)
    x_hi = x0 + expand_sigma(s_hi, x0) * randn_like(x0, generator)
    with torch.no_grad():
        x_lo = heun_step(teacher, x_hi, s_hi, s_lo, cond)
        target = student(x_lo, s_lo, cond)
    pred = student(x_hi, s_hi, cond)
    dt = torch.promote_types(pred.dtype, torch.float32)
    diff = (pred.to(dt) - target.to(dt)) ** 2
    if mask is not None:
        diff = diff * torch.broadcast_to(mask.to(dt), diff.shape)
    sq = diff.flatten(1).sum(1)
    if distance == "pseudo_huber":
        dim = x0[0].numel() if mask is None else float(mask.flatten(1).sum(1).float().mean())
        c = 0.00054 * math.sqrt(dim)
        dist = (sq + c**2).sqrt() - c
    elif distance == "l2":
        dist = sq
    else:
        raise ValueError(
            f"distance={distance!r} is not valid; choose one of ['l2', 'pseudo_huber']"
        )
    return (dist / (s_hi - s_lo).to(dt)).mean()
