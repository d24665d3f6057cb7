"""How the ensemble forecast's cost grows with the grid (issue 19's cost-growth table).

One network evaluation of the NCEP forecaster's DiT (``configs/train_ncep_dit.yaml``: patch 2,
depth 4, hidden 64, 4 heads; 1 variable, 2 context states) on grids from NCEP's 25 x 53 to a
1-degree global 181 x 360, members batched, each grid in a fresh process so that its peak RSS is
its own. A member-step of GenCast's sampler costs 39 evaluations, so seconds per member-step are
39 x the per-evaluation time per member. The exponent of time against grid points is fitted by
least squares on log-log. Untrained weights: the cost does not depend on them.

    python -m benchmarks.cost_growth --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GRIDS = [(25, 53), (64, 128), (121, 240), (181, 360)]
EVALS_PER_MEMBER_STEP = 39  # dpmpp_2s, 20 noise levels (GenCast's sampler)


def measure(h: int, w: int, members: int, patch: int, reps: int) -> dict[str, float]:
    """Median seconds of one evaluation for ``members`` states on an ``h x w`` grid."""
    import torch

    from stdiff.diffusion.conditioning import Condition
    from stdiff.diffusion.nets.dit import DiT

    with torch.random.fork_rng():  # untrained weights: the cost does not depend on them
        net = DiT(1, patch_size=patch, depth=4, hidden=64, num_heads=4, context_channels=2).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(members, 1, h, w, generator=g)
    c = torch.zeros(members)
    cond = Condition(context=torch.randn(members, 2, h, w, generator=g))
    times = []
    with torch.no_grad():
        net(x, c, cond)
        for _ in range(reps):
            t0 = time.perf_counter()
            net(x, c, cond)
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: kB)
    sec = float(np.median(times))
    return {"h": h, "w": w, "members": members, "patch": patch, "seconds_per_eval": sec,
            "member_step_s": EVALS_PER_MEMBER_STEP * sec / members, "peak_rss_gib": rss}  # fmt: skip


def train_step(
    h: int, w: int, patch: int, ckpt: int, reps: int, batch: int = 1
) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, AdamW) of the same DiT on an
    ``h x w`` grid, ``batch`` states, and the process's peak RSS."""
    import torch

    from stdiff.diffusion.conditioning import Condition
    from stdiff.diffusion.nets.dit import DiT

    with torch.random.fork_rng():
        net = DiT(1, patch_size=patch, depth=4, hidden=64, num_heads=4, context_channels=2,
                  grad_checkpointing=bool(ckpt))  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, h, w, generator=g)
    c = torch.zeros(batch)
    cond = Condition(context=torch.randn(batch, 2, h, w, generator=g))
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        (net(x, c, cond) - x).pow(2).mean().backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"h": h, "w": w, "patch": patch, "ckpt": ckpt, "step_s": float(np.median(times)),
            "peak_rss_gib": rss}  # fmt: skip


def training_section(reps: int, write: Path | None) -> None:
    """Training step time against grid and patch size, each case in a fresh process."""
    from benchmarks.report import emit_section

    cases = [(h, w, p, 0) for p in (2, 4) for h, w in GRIDS if not (p == 2 and h * w > 40000)]
    cases += [(121, 240, 2, 1)]  # activation checkpointing where patch 2 gets expensive
    rows = []
    for h, w, p, ck in cases:
        res = subprocess.run([sys.executable, "-m", "benchmarks.cost_growth", "--train-one",
                              str(h), str(w), str(p), str(ck), "--reps", str(reps)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    lines = ["| grid | patch | activation checkpointing | tokens | s per training step (1 state) "
             "| peak RSS GiB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tokens = -(-r["h"] // r["patch"]) * -(-r["w"] // r["patch"])
        lines.append(f"| {r['h']}x{r['w']} | {r['patch']} | {'yes' if r['ckpt'] else 'no'} | "
                     f"{tokens} | {r['step_s']:.3f} | {r['peak_rss_gib']:.2f} |")  # fmt: skip
    fits = []
    for p in (2, 4):
        sel = [r for r in rows if r["patch"] == p and not r["ckpt"]]
        pts = np.log([r["h"] * r["w"] for r in sel])
        slope = np.polyfit(pts, np.log([r["step_s"] for r in sel]), 1)[0]
        fits.append(f"patch {p}: step time grows as (grid points)^{slope:.2f}")
    body = (
        "The forecaster's DiT (patch 2 or 4, depth 4, hidden 64, 4 heads), one state per step, "
        f"median of {reps} steps after one warm-up, each case in a fresh process (patch 2 "
        "on the 1-degree grid is left out to bound the run's time).\n\n"
        + "\n".join(lines)
        + "\n\nFitted: "
        + "; ".join(fits)
        + "."
    )
    cmd = "`python -m benchmarks.cost_growth --training --write BENCHMARKS.md`"
    emit_section("cost-growth-training", "Training step time against grid and patch size", cmd,
                 body, write)  # fmt: skip


def imputation_cost(reps: int) -> list[dict[str, float]]:
    """Seconds per CSDI evaluation (paper size: 64 channels, 4 layers, 48 x 35) against the
    number of samples evaluated together (stays x members)."""
    import torch

    from stdiff.diffusion.conditioning import Condition
    from stdiff.diffusion.nets.csdi import CSDINet

    with torch.random.fork_rng():
        net = CSDINet(35).eval()
    g, rows = torch.Generator().manual_seed(0), []
    for n in (4, 16, 64, 256):
        x = torch.randn(n, 48, 35, generator=g)
        mask = (torch.rand(n, 48, 35, generator=g) < 0.5).float()
        cond, c = Condition(observed=x * mask, mask=mask), torch.full((n,), 10.0)
        with torch.no_grad():
            net(x, c, cond)
            t = []
            for _ in range(reps):
                t0 = time.perf_counter()
                net(x, c, cond)
                t.append(time.perf_counter() - t0)
        rows.append({"samples": n, "seconds": float(np.median(t))})
    return rows


def _child(args: list[str]) -> dict[str, float]:
    res = subprocess.run([sys.executable, "-m", "benchmarks.cost_growth", "--one", *args],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write", type=Path)
    ap.add_argument("--one", nargs=4, type=int, metavar=("H", "W", "MEMBERS", "PATCH"))
    ap.add_argument("--training", action="store_true", help="training step time instead")
    ap.add_argument("--train-one", nargs=4, type=int, metavar=("H", "W", "PATCH", "CKPT"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, reps=args.reps)))
        return 0
    if args.train_one:
        print(json.dumps(train_step(*args.train_one, reps=args.reps)))
        return 0
    if args.training:
        training_section(args.reps, args.write)
        return 0
    rows = [_child([str(h), str(w), str(args.members), str(p), "--reps", str(args.reps)])
            for p in (2, 4) for h, w in GRIDS]  # fmt: skip
    lines = ["| grid | patch | tokens | s per evaluation (4 members) | s per member-step | peak RSS GiB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tokens = -(-r["h"] // r["patch"]) * -(-r["w"] // r["patch"])
        lines.append(f"| {r['h']}x{r['w']} | {r['patch']} | {tokens} | {r['seconds_per_eval']:.3f} | "
                     f"{r['member_step_s']:.2f} | {r['peak_rss_gib']:.2f} |")  # fmt: skip
    fits = []
    for p in (2, 4):
        sel = [r for r in rows if r["patch"] == p]
        pts = np.log([r["h"] * r["w"] for r in sel])
        slope = np.polyfit(pts, np.log([r["seconds_per_eval"] for r in sel]), 1)[0]
        fits.append(f"patch {p}: time grows as (grid points)^{slope:.2f}")
    imp = imputation_cost(args.reps)
    slope = np.polyfit(np.log([r["samples"] for r in imp]), np.log([r["seconds"] for r in imp]), 1)[
        0
    ]
    lines += ["", "| CSDI samples per evaluation (stays x members) | s per evaluation | ms per sample |",
              "|---|---|---|"]  # fmt: skip
    lines += [f"| {r['samples']} | {r['seconds']:.3f} | {1000 * r['seconds'] / r['samples']:.1f} |"
              for r in imp]  # fmt: skip
    fits.append(f"CSDI imputation: time grows as (samples)^{slope:.2f}")
    body = "\n".join(lines) + "\n\nFitted: " + "; ".join(fits) + "."
    from benchmarks.report import emit_section

    cmd = "`python -m benchmarks.cost_growth --write BENCHMARKS.md`"
    emit_section("cost-growth-forecast", "Forecast cost against grid size", cmd, body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
