"""Progressive and consistency distillation against exact answers on Gaussian data.

For x0 ~ N(0, c^2) the probability-flow ODE is linear, ``x(s') = x(s) sqrt(c^2 + s'^2) /
sqrt(c^2 + s^2)``, so every sampler and every consistency function is a scalar multiple of its
input: students with a per-noise-level scalar gain can represent them exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stdiff.diffusion.distill import (
    ConsistencyDenoiser,
    consistency_grid,
    consistency_loss,
    heun_step,
    progressive_loss,
    progressive_target,
)
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.samplers import sample_consistency, sample_ddim
from stdiff.diffusion.schedules import make_schedule

C = 0.5  # data std
SCHED = make_schedule("edm")


def analytic(x, sigma, cond=None):
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return C**2 / (C**2 + s**2) * x


class Gain(nn.Module):
    """``F(x_in, c_noise) = x_in * g(c_noise)``: any linear-in-x denoiser is representable."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Sequential(
            nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, x, c_noise, cond=None):
        return x * self.g(c_noise.reshape(-1, 1).to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))


def _student(cls=Denoiser, seed=0):
    torch.manual_seed(seed)  # test-only: a fixed init for the tiny student
    return cls(Gain().double(), Preconditioning("edm", C), SCHED)


def _gain(fn, sigmas):
    """The scalar a sampler applies to its start (all maps here are linear)."""
    return float(sample_ddim(fn, torch.ones(1, 1, dtype=torch.float64), sigmas))


def test_progressive_target_makes_one_step_equal_two_teacher_steps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64) * 5
    s = torch.full((16,), 7.0, dtype=torch.float64)
    for m, n in [(2.0, 0.5), (1.0, 0.0)]:
        mid, nxt = torch.full_like(s, m), torch.full_like(s, n)
        target = progressive_target(analytic, x, s, mid, nxt)
        one = x + (n - 7.0) * (x - target) / 7.0  # one DDIM step with D = target
        x_mid = x + (m - 7.0) * (x - analytic(x, 7.0)) / 7.0
        two = x_mid + (n - m) * (x_mid - analytic(x_mid, m)) / m
        torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)


def _train(loss_fn, student, steps, lr=3e-3, seed=0):
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = torch.randn(512, 1, generator=g, dtype=torch.float64) * C
        loss = loss_fn(student, x0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student


def test_progressive_distillation_to_one_step_reproduces_the_16_step_teacher():
    teacher = analytic
    target_gain = _gain(teacher, SCHED.discretize(16, "uniform_t"))
    for n in (8, 4, 2, 1):
        student = _student(seed=n)

        def loss(st, x0, g, n=n, teacher=teacher):
            return progressive_loss(st, teacher, x0, SCHED, n, generator=g, sigma_data=C)

        _train(loss, student, 600 if n > 1 else 1200)
        student.requires_grad_(False)
        got = _gain(student, SCHED.discretize(n, "uniform_t"))
        # each stage reproduces its teacher at half the steps
        ref = _gain(teacher, SCHED.discretize(2 * n, "uniform_t"))
        assert got == pytest.approx(ref, rel=0.02), n
        teacher = student
    naive = _gain(analytic, SCHED.discretize(1, "uniform_t"))
    assert got == pytest.approx(target_gain, rel=0.05)
    assert abs(naive / target_gain - 1) > 0.5  # the teacher itself cannot do it in one step


def test_consistency_boundary_holds_for_any_network():
    f = _student(ConsistencyDenoiser)
    x = torch.randn(4, 1, dtype=torch.float64)
    torch.testing.assert_close(f(x, SCHED.sigma_min), x)


def test_consistency_distillation_learns_the_exact_consistency_function():
    grid = consistency_grid(SCHED, 18)
    assert grid[0] == pytest.approx(SCHED.sigma_min) and grid[-1] == pytest.approx(SCHED.sigma_max)
    student = _student(ConsistencyDenoiser)

    def loss(st, x0, g):
        return consistency_loss(st, analytic, x0, grid, distance="l2", generator=g)

    _train(loss, student, 3000, lr=5e-3)
    student.requires_grad_(False)
    one = torch.ones(1, 1, dtype=torch.float64)
    # CD's fixed point is the chain of teacher Heun steps down the grid to s_min, which is within
    # 6 % of the exact flow map sqrt(c^2 + s_min^2) / sqrt(c^2 + s^2) here
    chain = 1.0
    for k in range(1, len(grid)):
        chain *= float(heun_step(analytic, one, grid[k : k + 1], grid[k - 1 : k], None))
        exact = math.sqrt(C**2 + SCHED.sigma_min**2) / math.sqrt(C**2 + grid[k] ** 2)
        assert chain == pytest.approx(float(exact), rel=0.06)
        # the bootstrapped target converges slowly where (1 - c(s)) is small: 6 %, not 1 %
        assert float(student(one, grid[k])) == pytest.approx(chain, rel=0.06), k
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 1, generator=g, dtype=torch.float64) * SCHED.sigma_max
    one_step = sample_consistency(student, x, [SCHED.sigma_max, 0.0], generator=g)
    assert float(one_step.std()) == pytest.approx(C, rel=0.05)
    assert float(analytic(x, SCHED.sigma_max).std()) < 0.01  # one teacher step: collapsed


def test_heun_step_is_second_order_on_the_gaussian_flow():
    x = torch.ones(1, 1, dtype=torch.float64)
    errors = []
    for h in (0.2, 0.1):  # halving the step: Heun's local error falls ~8x, Euler's ~4x
        s, n = (
            torch.tensor([1.0 + h], dtype=torch.float64),
            torch.tensor([1.0], dtype=torch.float64),
        )
        exact = math.sqrt(C**2 + 1) / math.sqrt(C**2 + (1 + h) ** 2)
        euler = float(sample_ddim(analytic, x, [1.0 + h, 1.0]))
        heun = float(heun_step(analytic, x, s, n, None))
        assert abs(heun - exact) < 0.25 * abs(euler - exact)
        errors.append(abs(heun - exact))
    assert errors[0] / errors[1] > 6


def test_consistency_grid_for_discrete_schedules_uses_integer_steps():
    csdi = make_schedule("csdi_quad")
    grid = consistency_grid(csdi, 50)
    torch.testing.assert_close(grid, csdi.sigmas_table)
    with pytest.raises(ValueError, match="T=50"):
        consistency_grid(csdi, 51)
