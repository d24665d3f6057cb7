"""The diffusers side of benchmarks/samplers.py; runs inside the diffusers venv.

    <peer venv>/bin/python benchmarks/peer_diffusers.py --config '{"n": 20000, ...}'

Drives diffusers' DDIM, DPM-Solver++(2M), Euler and Heun schedulers, configured with the DDPM
linear schedule, with the exact epsilon model of the benchmark's Gaussian mixture, and prints
JSON (errors per NFE budget, a many-step model check, overhead per step) to stdout. The mixture,
reference samples and metric are imported from ``benchmarks.samplers`` so both sides share them;
this only needs torch, which the venv takes from the project venv (see make_peer_venv.sh).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # appended: the venv's own packages keep precedence

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from benchmarks.samplers import (  # noqa: E402
    OVERHEAD_STEPS,
    SEED_NOISE,
    SEED_REF,
    EnergyDistance,
    exact_samples,
    interleaved_ms,
    make_mixture,
    overhead_runs,
    overhead_tensor,
    result,
)
from stdiff.diffusion.analytic import GaussianMixture  # noqa: E402

CHECK_STEPS = 500
DDPM = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
)
SCHEDULERS = ("DDIM", "DPMSolverMultistep", "Euler", "Heun")
KARRAS = ("DPMSolverMultistep", "Euler", "Heun")  # DDIM has no Karras sigmas
CONFIG_NOTE = (
    "all schedulers with num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, "
    "beta_schedule='linear', prediction_type='epsilon'; 'trailing' rows use "
    "timestep_spacing='trailing'; 'karras' rows use use_karras_sigmas=True with "
    "timestep_spacing='linspace' (so Euler/Heun take their Karras range from the whole table, "
    "like ours; DPMSolverMultistep always does, and rounds its Karras timesteps to integers). "
    "DDIM: eta=0, clip_sample=False (the data exceed [-1, 1]), set_alpha_to_one=True. "
    "DPMSolverMultistep: algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint', "
    "lower_order_final=True, final_sigmas_type='zero'. Euler/Heun: defaults otherwise (no churn)."
)


def make_scheduler(name: str, spacing: str) -> Any:
    """A diffusers scheduler on the DDPM linear schedule; ``spacing`` is trailing or karras."""
    karras = spacing == "karras"
    ts = "linspace" if karras else "trailing"
    if name == "DDIM":
        if karras:
            raise ValueError("DDIMScheduler has no Karras sigmas")
        return DDIMScheduler(**DDPM, timestep_spacing=ts, clip_sample=False, set_alpha_to_one=True)
    if name == "DPMSolverMultistep":
        return DPMSolverMultistepScheduler(
            **DDPM,
            timestep_spacing=ts,
            use_karras_sigmas=karras,
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    cls = {"Euler": EulerDiscreteScheduler, "Heun": HeunDiscreteScheduler}[name]
    return cls(**DDPM, timestep_spacing=ts, use_karras_sigmas=karras)


def steps_for_budget(name: str, budget: int) -> int:
    """Steps fitting ``budget`` evaluations: Heun needs 2N-1 for N steps, the others N."""
    return (budget + 1) // 2 if name == "Heun" else budget


class EpsModel:
    """The exact epsilon model ``eps(x_t, t)`` of a mixture for a VP scheduler.

    ``alpha_bar`` comes from the scheduler's ``alphas_cumprod``; a fractional ``t`` (Karras
    timesteps) interpolates ``log sigma`` linearly, the inverse of diffusers' ``_sigma_to_t``.
    ``x_t`` is the VP state (what every scheduler feeds the model after ``scale_model_input``),
    so the VE state is ``x_t / sqrt(alpha_bar) = x_t sqrt(1 + sigma^2)`` and
    ``eps = (x_ve - D(x_ve, sigma)) / sigma``.
    """

    def __init__(self, mix: GaussianMixture, alphas_cumprod: Tensor) -> None:
        ab = alphas_cumprod.double()
        self.mix, self.log_sigmas, self.calls = mix, ((1 - ab) / ab).sqrt().log(), 0

    def sigma(self, t: float) -> float:
        """sigma at the (possibly fractional) timestep ``t``."""
        lo = min(max(math.floor(t), 0), len(self.log_sigmas) - 2)
        w = t - lo
        return math.exp((1 - w) * float(self.log_sigmas[lo]) + w * float(self.log_sigmas[lo + 1]))

    def __call__(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        self.calls += 1
        s = self.sigma(float(t))
        x = x_t.double() * math.sqrt(1 + s * s)
        return ((x - self.mix.denoise(x, s)) / s).to(x_t.dtype)


def run(name: str, spacing: str, steps: int, n: int, mix: GaussianMixture) -> tuple:
    """Sample ``n`` points with ``steps`` scheduler steps from the benchmark's initial noise.

    Returns ``(x0, evaluations, mismatch)``: ``mismatch`` is the largest relative difference
    between the sigma of the timestep the model is given and the sigma the scheduler's update
    uses (0 for DDIM, which has no sigmas)."""
    sch = make_scheduler(name, spacing)
    sch.set_timesteps(steps)
    model, mismatch = EpsModel(mix, sch.alphas_cumprod), 0.0
    x = torch.randn((n, 2), generator=torch.Generator().manual_seed(SEED_NOISE))
    x = x * sch.init_noise_sigma
    for t in sch.timesteps:
        x_in = sch.scale_model_input(x, t)
        if hasattr(sch, "sigmas"):
            s = float(sch.sigmas[sch.step_index or 0])
            mismatch = max(mismatch, abs(model.sigma(float(t)) / s - 1))
        x = sch.step(model(x_in, t), t, x).prev_sample
    return x, model.calls, mismatch


def overhead_run(name: str, x0: Tensor) -> float:
    """Seconds of ``OVERHEAD_STEPS`` steps of ``scale_model_input`` + trivial model ``0.5 x`` +
    ``step`` on ``x0`` (``set_timesteps`` is not timed)."""
    sch = make_scheduler(name, "trailing")
    sch.set_timesteps(OVERHEAD_STEPS)
    x = x0 * sch.init_noise_sigma
    t0 = time.perf_counter()
    for t in sch.timesteps:
        x = sch.step(0.5 * sch.scale_model_input(x, t), t, x).prev_sample
    return time.perf_counter() - t0


def overhead(repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms of our samplers' and the diffusers schedulers' overhead runs, interleaved, and
    the model calls of each run (see ``benchmarks.samplers.overhead_runs``)."""
    x0 = overhead_tensor()
    fns, calls = overhead_runs(x0)
    for name in SCHEDULERS:
        fns[f"diffusers {name}"] = partial(overhead_run, name, x0)
        calls[f"diffusers {name}"] = 2 * OVERHEAD_STEPS - 1 if name == "Heun" else OVERHEAD_STEPS
    return interleaved_ms(fns, repeats), calls


def main() -> None:
    """Parse ``--config`` (JSON from benchmarks/samplers.py), run, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help="JSON: n, budgets, repeats, samples_out")
    cfg = json.loads(ap.parse_args().config)
    torch.set_num_threads(2)
    n, mix = cfg["n"], make_mixture()
    ed = EnergyDistance(exact_samples(mix, n, SEED_REF))
    rows, samples, check, mismatch = [], {}, {}, {}
    for spacing, names in (("trailing", SCHEDULERS), ("karras", KARRAS)):
        for name in names:
            for budget in cfg["budgets"]:
                steps = steps_for_budget(name, budget)
                x, nfe, mis = run(name, spacing, steps, n, mix)
                key = f"{name}|{spacing}"
                mismatch[key] = max(mismatch.get(key, 0.0), mis)
                rows.append(result("diffusers", name, spacing, budget, steps, nfe, ed(x)))
                samples[f"{name}|{spacing}|{budget}"] = x
    mean, cov = mix.mean(), mix.covariance()
    for name in SCHEDULERS:
        x, nfe, _ = run(name, "trailing", CHECK_STEPS, n, mix)
        xd = x.double()
        check[name] = dict(
            nfe=nfe,
            error=ed(x),
            mean_err=float((xd.mean(0) - mean).abs().max()),
            cov_err=float((xd.T.cov() - cov).abs().max()),
        )
    if cfg.get("samples_out"):
        torch.save(samples, cfg["samples_out"])
    out = dict(
        version=diffusers.__version__,
        check_steps=CHECK_STEPS,
        t_mismatch=mismatch,
        config_note=CONFIG_NOTE,
        rows=rows,
        check=check,
    )
    out["overhead_ms"], out["overhead_calls"] = overhead(cfg["repeats"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
