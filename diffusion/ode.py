"""An adaptive Dormand-Prince 5(4) integrator on tuples of tensors (used by the probability-flow
ODE sampler and the likelihood). Written from the Butcher tableau in Hairer, Norsett & Wanner,
"Solving ODEs I", table 5.2, with the standard error-per-step control (ibid. II.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

State = tuple[Tensor, ...]

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


@dataclass
class SolveStats:
    """Counts of one integration: function evaluations, accepted and rejected steps."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0


def _combine(y: State, h: float, ks: list[State], coeffs: tuple[float, ...]) -> State:
    out = []
    for j, yj in enumerate(y):
        acc = yj
        for c, k in zip(coeffs, ks, strict=False):
            if c != 0.0:
                acc = acc + (h * c) * k[j]
        out.append(acc)
    return tuple(out)


def _error_norm(err: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    total, count = 0.0, 0
    for e, a, b in zip(err, y0, y1, strict=True):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        total += float(((e / scale) ** 2).sum())
        count += e.numel()
    return (total / max(count, 1)) ** 0.5


def solve_rk45(
    f: Callable[[float, State], State],
    y0: State,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 100_000,
) -> tuple[State, SolveStats]:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either direction).

    The error norm is the RMS over every element of every state tensor, so a batch is
    integrated with one shared step sequence. Returns the final state and :class:`SolveStats`.
    """
    stats = SolveStats()
    span = t1 - t0
    if span == 0:
        return y0, stats
    direction = 1.0 if span > 0 else -1.0
    k1 = f(t0, y0)
    stats.nfe += 1
    if first_step is None:  # Hairer's rough initial guess: 1 % of |y| / |y'|
        d0 = max(float(torch.sqrt(sum((v**2).mean() for v in y0) / len(y0))), 1e-5)
        d1 = max(float(torch.sqrt(sum((v**2).mean() for v in k1) / len(k1))), 1e-5)
        first_step = 0.01 * d0 / d1
    h = direction * min(abs(first_step), abs(span))
    t, y = t0, y0
    while direction * (t1 - t) > 1e-12 * abs(span):
        if stats.accepted + stats.rejected >= max_steps:
            raise RuntimeError(f"solve_rk45: more than max_steps={max_steps} steps")
        if direction * (t + h - t1) > 0:
            h = t1 - t
        ks = [k1]
        for i in range(1, 7):
            yi = _combine(y, h, ks, _A[i])
            ks.append(f(t + _C[i] * h, yi))
        stats.nfe += 6
        y_new = _combine(y, h, ks, _B5)
        err = tuple(
            sum(h * e * k[j] for e, k in zip(_E, ks, strict=True) if e != 0.0)
            for j in range(len(y))
        )
        norm = _error_norm(err, y, y_new, rtol, atol)
        if norm <= 1.0:
            t, y, k1 = t + h, y_new, ks[6]  # first-same-as-last
            stats.accepted += 1
        else:
            stats.rejected += 1
        factor = 10.0 if norm == 0 else min(10.0, max(0.2, 0.9 * norm**-0.2))
        h = h * factor
    return y, stats
