"""Sampler benchmark: stdiff's samplers against diffusers' schedulers on an exact Gaussian mixture.

    .venv/bin/python -m benchmarks.samplers --write BENCHMARKS.md

Both sides sample a fixed 2-D Gaussian mixture with its exact denoiser on the DDPM linear schedule,
from the same initial noise, and are scored by the same squared energy distance to exact samples.
The diffusers side runs in its own venv (``benchmarks/make_peer_venv.sh diffusers``) through
``benchmarks/peer_diffusers.py``, which imports the shared definitions below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.report import machine, write_section
from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.samplers import SAMPLERS, sample, steps_for_evals
from stdiff.diffusion.schedules import vp_linear

REPO = Path(__file__).resolve().parent.parent
BUDGETS = (4, 5, 8, 10, 20, 25, 40, 50, 100)  # all divide T=1000: diffusers' DDIM needs that
MAIN_BUDGETS = (5, 10, 20, 50)
SEED_NOISE, SEED_REF, SEED_FLOOR = 1234, 2024, 7000
PF_ODE_RTOLS = (1e-2, 1e-3, 1e-4)
OVERHEAD_SHAPE = (64, 4, 64, 64)
OVERHEAD_STEPS = 20
ANGLES = 64
FLOOR_SETS = 20
FIELDS = ("side", "name", "spacing", "budget", "steps", "nfe", "error")
BEGIN, END = "<!-- BEGIN samplers -->", "<!-- END samplers -->"
PAIRS = {"ddim": "DDIM", "euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPMSolverMultistep"}
VP_START = ("ddim", "dpmpp_2m")  # their diffusers counterparts start from a VP state


def make_mixture() -> GaussianMixture:
    """The benchmark data: 8 components on a ring of radius 2, each elongated along the ring
    (std 0.2 tangential, 0.05 radial), weights proportional to 1..8."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    c, s = ang.cos(), ang.sin()
    rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)  # cols: radial, tangent
    covs = rot @ torch.diag(torch.tensor([0.05**2, 0.2**2], dtype=torch.float64)) @ rot.mT
    return GaussianMixture(2.0 * torch.stack([c, s], 1), covs, torch.arange(1.0, 9.0))


def exact_samples(mix: GaussianMixture, n: int, seed: int) -> Tensor:
    """``n`` exact samples from ``mix`` drawn with a generator seeded ``seed``."""
    return mix.sample(n, torch.Generator().manual_seed(seed))[0]


def _sum_pairs_sorted(z: Tensor) -> Tensor:
    """``sum_{i<j} |z_i - z_j|`` for each row of ``z`` sorted ascending: ``(M, n) -> (M,)``."""
    k = torch.arange(z.shape[1], dtype=z.dtype)
    return (z * (2 * k - z.shape[1] + 1)).sum(1)


class EnergyDistance:
    """Squared energy distance (V-statistic) ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` to a fixed 2-D
    reference sample.

    Uses ``|v| = (pi/2) mean_phi |<u_phi, v>|`` over ``angles`` equispaced directions on the half
    circle: each direction is an exact 1-D energy distance computed by sorting (O(n log n)); the
    angular rule is exact up to its (exponentially small, periodic integrand) quadrature error,
    which :func:`energy_distance_pairwise` checks.
    """

    def __init__(self, ref: Tensor, angles: int = ANGLES) -> None:
        phi = torch.arange(angles, dtype=torch.float64) * (math.pi / angles)
        self.u = torch.stack([phi.cos(), phi.sin()])  # (2, M)
        self.ref, _ = (ref.double() @ self.u).T.contiguous().sort(1)  # (M, m)
        self.cum = torch.nn.functional.pad(self.ref.cumsum(1), (1, 0))  # (M, m + 1)
        self.ref_pairs = _sum_pairs_sorted(self.ref)

    def __call__(self, x: Tensor) -> float:
        """Squared energy distance between the samples ``x`` ``(n, 2)`` and the reference."""
        xs, _ = (x.double() @ self.u).T.contiguous().sort(1)
        n, m = xs.shape[1], self.ref.shape[1]
        below = torch.searchsorted(self.ref, xs)  # how many reference points lie below
        cross = (xs * (2 * below - m) - 2 * self.cum.gather(1, below) + self.cum[:, -1:]).sum(1)
        xx, yy = 2 * _sum_pairs_sorted(xs) / n**2, 2 * self.ref_pairs / m**2
        return float(math.pi / 2 * (2 * cross / (n * m) - xx - yy).mean())


def energy_distance_pairwise(x: Tensor, y: Tensor, chunk: int = 1000) -> float:
    """The same V-statistic from all pairwise distances, in row chunks (O(n m); for checks)."""
    means = []
    for a, b in ((x, y), (x, x), (y, y)):
        a, b = a.double(), b.double()
        tot = sum(
            torch.cdist(a[i : i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").sum()
            for i in range(0, len(a), chunk)
        )
        means.append(float(tot) / (len(a) * len(b)))
    return 2 * means[0] - means[1] - means[2]


def interleaved_ms(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median ms of each timed run (each ``fn`` returns its own seconds), the runs interleaved
    round-robin so that every entry sees the same machine load; one warm-up round first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = fn()
            if r:
                times[k].append(1e3 * t)
    return {k: statistics.median(v) for k, v in times.items()}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overhead_runs(x0: Tensor) -> tuple[dict[str, Callable[[], float]], dict[str, int]]:
    """Timed runs of the trivial model ``0.5 x`` (``"model"``) and of each fixed-step sampler of
    ours (``"ours NAME"``) for ``OVERHEAD_STEPS`` steps on ``x0``, and their model calls."""
    sig = vp_linear().discretize(OVERHEAD_STEPS)
    fns: dict[str, Callable[[], float]] = {"model": partial(_timed, lambda: 0.5 * x0)}
    calls = {"model": 1}
    for name, spec in SAMPLERS.items():
        if spec.evals is not None:
            g = torch.Generator().manual_seed(1)
            run = partial(spec.fn, lambda x, s, c: 0.5 * x, x0, sig, generator=g)
            fns[f"ours {name}"] = partial(_timed, run)
            calls[f"ours {name}"] = spec.evals(OVERHEAD_STEPS)
    return fns, calls


def per_step_ms(ms: dict[str, float], calls: dict[str, int]) -> dict[str, float]:
    """ms per step with the model's calls subtracted (``ms["model"]`` is one call)."""
    return {k: (t - calls[k] * ms["model"]) / OVERHEAD_STEPS for k, t in ms.items() if k != "model"}


def overhead_tensor() -> Tensor:
    """The float32 ``OVERHEAD_SHAPE`` input of the overhead runs."""
    return torch.randn(OVERHEAD_SHAPE, generator=torch.Generator().manual_seed(0))


class Counted:
    """A denoiser that counts its evaluations."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        return self.fn(x, sigma, cond)


def result(*values: Any) -> dict[str, Any]:
    """One measured row (both sides use this layout): the values of ``FIELDS``, in order."""
    return dict(zip(FIELDS, values, strict=True))


def run_ours(n: int, budgets: tuple[int, ...]) -> tuple[list[dict], dict[str, Tensor]]:
    """Every fixed-step sampler at every budget, trailing and Karras spacing, then pf_ode.

    Returns result rows and, for pointwise comparison, the samples of the samplers diffusers also
    has, keyed ``"name|spacing|budget"``; ``"name|vp-start|budget"`` are ddim and dpmpp_2m
    started from diffusers' VP initial state ``z sqrt(1 + sigma_max^2)`` instead of our
    ``z sigma_max`` (same ``z``)."""
    mix, sched = make_mixture(), vp_linear()
    ed = EnergyDistance(exact_samples(mix, n, SEED_REF))
    rows, kept = [], {}
    for spacing in ("trailing", "karras"):
        for name in (k for k, v in SAMPLERS.items() if v.evals is not None):
            for budget in budgets:
                steps = steps_for_evals(name, budget)
                den, gen = Counted(mix), torch.Generator().manual_seed(SEED_NOISE)
                sig = sched.discretize(steps, spacing)
                x = sample(den, (n, 2), sig, sampler=name, generator=gen)
                assert den.calls == SAMPLERS[name].evals(steps), (name, steps, den.calls)
                rows.append(result("ours", name, spacing, budget, steps, den.calls, ed(x)))
                if name in PAIRS:
                    kept[f"{name}|{spacing}|{budget}"] = x
                if name in VP_START and spacing == "trailing":
                    z = torch.randn((n, 2), generator=torch.Generator().manual_seed(SEED_NOISE))
                    x = SAMPLERS[name].fn(mix, z * math.sqrt(1 + float(sig[0]) ** 2), sig)
                    kept[f"{name}|vp-start|{budget}"] = x
    sig = sched.discretize(2, "karras")  # pf_ode integrates from sigma_max to sigma_min
    for rtol in PF_ODE_RTOLS:
        den, gen = Counted(mix), torch.Generator().manual_seed(SEED_NOISE)
        x = sample(den, (n, 2), sig, sampler="pf_ode", generator=gen, rtol=rtol, atol=rtol)
        name = f"pf_ode rtol={rtol:g}"
        rows.append(result("ours", name, "adaptive", None, None, den.calls, ed(x)))
    return rows, kept


def run_peer(n: int, budgets: tuple[int, ...], repeats: int) -> dict | None:
    """Run peer_diffusers.py in the diffusers venv: its JSON plus its samples, or None."""
    root = os.environ.get("STDIFF_PEER_VENVS", str(Path.home() / ".cache" / "stdiff-peers"))
    py = Path(root) / "diffusers" / "bin" / "python"
    if not py.exists():
        msg = "run `bash benchmarks/make_peer_venv.sh diffusers`; measuring our side only"
        print(f"diffusers venv missing ({py}): {msg}", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(n=n, budgets=list(budgets), repeats=repeats, samples_out=f"{tmp}/peer.pt")
        cmd = [str(py), str(REPO / "benchmarks" / "peer_diffusers.py"), "--config", json.dumps(cfg)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=REPO).stdout
        res = json.loads(out)
        res["samples"] = torch.load(cfg["samples_out"])
    return res


def pointwise(kept: dict[str, Tensor], peer: dict, budgets: list[int]) -> list[list[str]]:
    """Rows of max / RMS |ours - diffusers| per counterpart pair and spacing, per budget."""
    out = []
    for ours, spacing in [(o, s) for s in ("trailing", "karras") for o in PAIRS] + [
        (o, "vp-start") for o in VP_START
    ]:
        theirs = f"{PAIRS[ours]}|{'trailing' if spacing == 'vp-start' else spacing}"
        if f"{theirs}|{budgets[0]}" in peer["samples"]:
            cells = []
            for b in budgets:
                y = peer["samples"][f"{theirs}|{b}"].double()
                d = (kept[f"{ours}|{spacing}|{b}"].double() - y).norm(dim=1)
                cells.append(f"{d.max():.1e} / {d.square().mean().sqrt():.1e}")
            out.append([f"{ours} vs {PAIRS[ours]}", spacing, *cells])
    return out


def nfe_for_error(points: list[tuple[int, float]], target: float) -> str:
    """The NFE at which the error first falls to ``target``, interpolated in log-log."""
    pts = sorted(points)
    for i, (nfe, err) in enumerate(pts):
        if err <= target:
            if i == 0:
                return f"≤{nfe}"
            n0, e0 = pts[i - 1]
            w = math.log(e0 / target) / math.log(e0 / err)
            return f"{n0 * (nfe / n0) ** w:.0f}"
    return f">{pts[-1][0]}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


TEMPLATE = """{begin}
## Samplers: stdiff vs diffusers on an exact Gaussian mixture

Command: `{command}` (diffusers venv: `bash benchmarks/make_peer_venv.sh diffusers`).
Machine: {machine}. Whole run: {seconds:.0f} s.

Setup: a 2-D mixture of 8 anisotropic Gaussians on a ring of radius 2 (unequal weights), sampled
with its exact denoiser (diffusers: the exact epsilon model built from it); {n} samples per run
from the same initial noise (torch.Generator seed {seed}) on both sides; DDPM linear schedule
(T=1000, betas 1e-4..0.02). Error: squared energy distance (V-statistic) to {n} exact samples;
noise floor (the same metric for an independent exact sample set): mean {fl[0]:.2e} over
{floor_sets} sets, range {fl[1]:.2e}..{fl[2]:.2e}; deterministic samplers converge to one draw
from this spread (their samples all come from the same noise). Energy distance via sorted 1-D projections on
{angles} angles; against all pairwise distances on {ed_check[0]} points it gives
{ed_check[1]:.5e} vs {ed_check[2]:.5e}.
{peer_note}

### Error at each NFE budget

Two-evaluation samplers (heun, dpmpp_2s, pc, diffusers Heun) take N steps with 2N-1 <= budget
evaluations. "trailing" is our default discretisation of vp_linear.

{error_table}

{adaptive_table}

### Evaluations needed for a fixed error

First NFE where the error reaches the target, log-log interpolated between measured budgets
(≤ / >: outside the measured range).

{nfe_table}
{pointwise}
### Overhead per step (model excluded)

{steps} steps on a float32 {shape} tensor with a trivial model (0.5 x, {t_model:.2f} ms per call,
subtracted; two-evaluation samplers call it twice per step); median of {repeats} runs, all runs
interleaved round-robin in one process ({timed_in}) so both sides see the same load.

{overhead_table}

### Findings

{findings}
{end}
"""

POINTWISE = """
### Pointwise agreement with diffusers at equal budget

Deterministic counterparts map the same initial noise to the same points: max / RMS over the
samples of |ours - diffusers|. diffusers' DDIM and DPMSolverMultistep start from the VP state
x_T = z, which is z sqrt(1 + sigma_max^2) in our coordinates, while we (like diffusers' Euler and
Heun) start from z sigma_max; "vp-start" rows rerun ours from their starting point. diffusers'
DPMSolverMultistep rounds its Karras timesteps to integers, so its model sees a sigma up to
{mismatch:.1%} off the sigma its update uses.

{table}

Model check, diffusers at {steps} steps (largest absolute error of the sample mean and
covariance entries vs the mixture's; the Monte Carlo std of the mean is about {mc:.0e}):
{check}.
"""


def _key(r: dict) -> str:
    return f"{r['side']} {r['name']} ({r['spacing']})"


def _join(items: list[str]) -> str:
    return ", ".join(items) or "none"


def findings(res: dict[str, Any]) -> str:
    """A short paragraph derived from the measured numbers only."""
    rows = [r for r in res["rows"] if r["budget"] is not None]
    floor, top, peer = statistics.mean(res["floor"]), max(res["budgets"]), res["peer"]
    err = {(r["side"], r["name"], r["spacing"], r["budget"]): r["error"] for r in rows}
    out = []
    for b in [b for b in MAIN_BUDGETS if b in res["budgets"]]:
        best = min(r["error"] for r in rows if r["budget"] == b)
        tied = [_key(r) for r in rows if r["budget"] == b and r["error"] <= 1.05 * best]
        out.append(f"Lowest error at NFE {b}: {best:.2e}, by {_join(tied)} (within 5%).")
    stuck = sorted({_key(r) for r in rows if r["budget"] == top and r["error"] > 2 * floor})
    out.append(f"Above 2x the floor at NFE {top}: {_join(stuck)}.")
    blown: dict[str, list[str]] = {}
    for r in (r for r in rows if r["error"] > 1):
        blown.setdefault(_key(r), []).append(str(r["budget"]))
    out.append(f"Error above 1: {_join([f'{k} at NFE {_join(v)}' for k, v in blown.items()])}.")
    for b in [b for b in (10, 50) if b in res["budgets"]]:
        names = [n for n, spec in SAMPLERS.items() if spec.evals is not None]
        kb = [n for n in names if err["ours", n, "karras", b] < err["ours", n, "trailing", b]]
        out.append(f"Karras spacing beats trailing at NFE {b} for: {_join(kb)}.")
    if peer is not None:
        worst = [
            f"{p[0]} ({p[1]}) {max(float(c.split()[0]) for c in p[2:]):.1e}"
            for p in res["pointwise"]
        ]
        nfes = "/".join(map(str, res["point_budgets"]))
        out.append(f"Largest pointwise |ours - diffusers| at NFE {nfes}: {_join(worst)}.")
        ms = res["overhead"]
        over = [
            f"{o} {ms[f'ours {o}']:.2f} vs {t} {ms[f'diffusers {t}']:.2f}" for o, t in PAIRS.items()
        ]
        out.append(f"Overhead per step, ours vs diffusers (ms): {_join(over)}.")
    return " ".join(out)


def render(res: dict[str, Any]) -> str:
    """The markdown section from the measured results."""
    rows, floor, budgets, peer = res["rows"], res["floor"], res["budgets"], res["peer"]
    curves: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        if r["budget"] is not None:
            curves.setdefault((f"{r['side']} {r['name']}", r["spacing"]), {})[r["budget"]] = r
    err_rows = [[*k, *(f"{c[b]['error']:.2e}" for b in budgets)] for k, c in curves.items()]
    targets = (2 * statistics.mean(floor), 10 * statistics.mean(floor))
    nfe_rows = [
        [*k, *(nfe_for_error([(r["nfe"], r["error"]) for r in c.values()], t) for t in targets)]
        for k, c in curves.items()
    ]
    adaptive = [
        [f"{r['side']} {r['name']}", str(r["nfe"]), f"{r['error']:.2e}"]
        for r in rows
        if r["budget"] is None
    ]
    ms, over = res["overhead"], []
    for name in (n for n, spec in SAMPLERS.items() if spec.evals is not None):
        theirs = f"diffusers {PAIRS.get(name)}"
        cell = f"{ms[theirs]:.2f}" if theirs in ms else ""
        over.append([name, f"{ms[f'ours {name}']:.2f}", PAIRS.get(name, ""), cell])
    point, note = "", "\n**diffusers venv missing: only our side was measured.**\n"
    if peer is not None:
        note = f"\ndiffusers {peer['version']}: {peer['config_note']}\n"
        check = "; ".join(
            f"{k} (NFE {v['nfe']}): error {v['error']:.2e}, mean {v['mean_err']:.1e}, "
            f"covariance {v['cov_err']:.1e}"
            for k, v in peer["check"].items()
        )
        head = ["pair", "spacing", *(f"NFE {b}" for b in res["point_budgets"])]
        point = POINTWISE.format(
            table=_table(head, res["pointwise"]),
            steps=peer["check_steps"],
            mc=res["mc_std"],
            mismatch=peer["t_mismatch"].get("DPMSolverMultistep|karras", float("nan")),
            check=check,
        )
    ctx = dict(res, begin=BEGIN, end=END, seed=SEED_NOISE, angles=ANGLES, steps=OVERHEAD_STEPS)
    ctx.update(shape=OVERHEAD_SHAPE, fl=(statistics.mean(floor), min(floor), max(floor)))
    ctx.update(peer_note=note, pointwise=point, findings=findings(res))
    ctx["error_table"] = _table(["sampler", "spacing", *(f"NFE {b}" for b in budgets)], err_rows)
    ctx["adaptive_table"] = _table(["adaptive sampler", "NFE", "error"], adaptive)
    head = ["sampler", "spacing", *(f"error ≤ {t:.1e}" for t in targets)]
    ctx["nfe_table"] = _table(head, nfe_rows)
    ctx["overhead_table"] = _table(["ours", "ms / step", "diffusers", "ms / step"], over)
    return TEMPLATE.format(**ctx)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the section and optionally write it into a markdown file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--write", type=Path, help="markdown file whose samplers section to replace")
    ap.add_argument("--json", type=Path, help="also dump the raw results here")
    ap.add_argument("--n", type=int, default=20000, help="samples per run (default 20000)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (default 5)")
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0, budgets, mix = time.perf_counter(), tuple(sorted(args.budgets)), make_mixture()
    rows, kept = run_ours(args.n, budgets)
    m = min(args.n, 4000)  # the pairwise check of the fast energy distance is O(m^2)
    ref_m, other_m = exact_samples(mix, m, SEED_REF), exact_samples(mix, m, SEED_FLOOR)
    peer = run_peer(args.n, budgets, args.repeats)
    ed = EnergyDistance(exact_samples(mix, args.n, SEED_REF))
    floor = [ed(exact_samples(mix, args.n, SEED_FLOOR + i)) for i in range(FLOOR_SETS)]
    res = dict(rows=rows, floor=floor, budgets=budgets, n=args.n, peer=peer)
    if peer is None:
        fns, calls = overhead_runs(overhead_tensor())
        ms, timed_in = interleaved_ms(fns, args.repeats), "this one"
    else:
        ms, calls, timed_in = peer["overhead_ms"], peer["overhead_calls"], "the diffusers venv's"
    res.update(overhead=per_step_ms(ms, calls), t_model=ms["model"], timed_in=timed_in)
    res.update(repeats=args.repeats, machine=machine())
    res["ed_check"] = (m, EnergyDistance(ref_m)(other_m), energy_distance_pairwise(other_m, ref_m))
    res["mc_std"] = math.sqrt(float(mix.covariance().diagonal().max()) / args.n)
    res["floor_sets"] = len(res["floor"])
    if peer is not None:
        rows += peer["rows"]
        res["point_budgets"] = [b for b in budgets if b in MAIN_BUDGETS] or list(budgets)
        res["pointwise"] = pointwise(kept, peer, res["point_budgets"])
        res["machine"] += f", diffusers {peer['version']}"
        del peer["samples"]
    res["seconds"] = time.perf_counter() - t0
    res["command"] = " ".join([".venv/bin/python -m benchmarks.samplers", *(argv or sys.argv[1:])])
    section = render(res)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.write:
        write_section(args.write, section, BEGIN, END)


if __name__ == "__main__":
    main()
