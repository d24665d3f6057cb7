"""CSDI on PhysioNet 2012 (set-a, fold 0): stdiff against PyPOTS 1.5's CSDI and the paper.

    .venv/bin/python -m benchmarks.imputation speed --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.imputation peer --epochs 2 --stays 16 --samples 10 --write BENCHMARKS.md
    .venv/bin/python -m benchmarks.imputation paper --checkpoint RUN --stays 64 --samples 20 --write BENCHMARKS.md

Phases (each writes its own section of BENCHMARKS.md):

* ``speed`` (run it on a quiet machine): the training step time of both sides on the same shapes
  (batch 16 x L 48 x K 35, the paper's model: 414,065 parameters on both sides), median of
  ``--repeats`` steps after warm-up, each side timing only its step (masking, forward, loss,
  backward, optimiser); and the imputation wall time of the same test stays with the same number
  of samples: PyPOTS's 50-step DDPM against ours with the same DDPM and with DPM-Solver++(2M) at
  10 evaluations.
* ``peer``: both trained from scratch for the same number of epochs on the same fold-0 training
  stays (one thread each, the two trainings run at once so they share the machine alike), then
  both impute the same first ``--stays`` test stays with 10 % of the observed values hidden
  (CSDI's mask, seed 1) and are scored by the same code (``pipelines.metrics.scores``).
* ``paper``: a trained checkpoint at 10 / 50 / 90 % hidden on the first ``--stays`` test stays,
  CSDI's sampler (DDPM, 50 steps) and a fast one, beside the paper's table (100 samples, all 800
  test stays, 200 epochs on a GPU).
* ``samplers``: one or more trained checkpoints with every ``--samplers NAME:STEPS`` on the same
  stays and hidden values (10 %), each row's CRPS beside the first row's (CSDI's DDPM-50).

``--fast NAME:STEPS ...`` are the fast samplers (default SDE-DPM-Solver++(2M) at 10
evaluations): the speed phase times each, the peer and paper phases use the first.

Scores are in normalised units as CSDI reports PhysioNet (its ``evaluate(..., scaler=1)``).
The PyPOTS venv comes from ``bash benchmarks/make_peer_venv.sh pypots``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from benchmarks.report import machine, write_section
from stdiff.datasets.masks import csdi_eval_mask, random_cond_mask
from stdiff.datasets.splits import csdi_stay_split
from stdiff.datasets.store import open_store
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.csdi import CSDINet
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import make_schedule
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation, score_imputation
from stdiff.pipelines.metrics.scores import CSDI_QUANTILES, interval_quantiles

REPO = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("STDIFF_PEER_VENVS", Path.home() / ".cache/stdiff-peers")) / "pypots"
PAPER = {0.1: (0.238, 0.217), 0.5: (0.330, 0.301), 0.9: (0.522, 0.481)}  # CRPS, MAE (table 2/3)
TITLES = {
    "speed": "CSDI on PhysioNet: speed, stdiff vs PyPOTS 1.5 (same shapes, same model size)",
    "peer": "CSDI on PhysioNet: stdiff vs PyPOTS 1.5 trained with the same budget",
    "paper": "CSDI on PhysioNet: stdiff beside the paper (Tashiro et al. 2021)",
    "samplers": "CSDI on PhysioNet: CRPS against network evaluations, sampler by sampler",
}


def sampler_spec(text: str) -> tuple[str, int]:
    """``NAME:STEPS`` -> ``(NAME, STEPS)``."""
    name, _, steps = text.partition(":")
    if not steps.isdigit():
        raise argparse.ArgumentTypeError(f"sampler {text!r}: expected NAME:STEPS, e.g. ddpm:50")
    return name, int(steps)


def _peer(*args: str, threads: int) -> subprocess.Popen:
    py = PEER / "bin/python"
    if not py.is_file():
        sys.exit(
            f"benchmarks.imputation: {py} is missing; run `bash benchmarks/make_peer_venv.sh pypots`"
        )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [str(py), str(REPO / "benchmarks/peer_pypots.py"), *args, "--threads", str(threads)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def _wait(p: subprocess.Popen) -> None:
    if p.wait() != 0:
        sys.exit(f"benchmarks.imputation: {' '.join(map(str, p.args))} failed ({p.returncode})")


class Data:
    """Fold-0 stays of the PhysioNet store, normalised with the training statistics."""

    def __init__(self, store: Path) -> None:
        ds = open_store(store)
        self.store = store
        self.observed = ds["observed_mask"].values.astype(bool)
        self.split = csdi_stay_split(self.observed, 0)
        mean, std = ds["values_mean"].values, ds["values_std"].values
        self.mean, self.std = mean, std
        self.norm = ((ds["values"].values - mean) / std).astype(np.float32)  # NaN where missing

    def test(self, n: int) -> np.ndarray:
        return np.sort(self.split.test)[:n]  # the stays run_imputation selects

    def hidden(self, ratio: float, idx: np.ndarray) -> np.ndarray:
        """``test_X``: the stays with NaN where missing or hidden for evaluation."""
        given = csdi_eval_mask(self.observed, ratio, seed=1)[idx]
        return np.where(given, self.norm[idx], np.nan).astype(np.float32)

    def score_peer(self, samples: np.ndarray, idx: np.ndarray, ratio: float) -> dict:
        """Scores of PyPOTS's samples ``(m, S, L, K)`` (normalised) by our scoring code."""
        given = csdi_eval_mask(self.observed, ratio, seed=1)[idx]
        phys = samples * self.std + self.mean
        dims = ("stay", "time", "feature")
        q = np.quantile(phys, sorted(set(CSDI_QUANTILES) | set(interval_quantiles())), axis=1)
        out = xr.Dataset(
            {
                "samples": (("stay", "member", *dims[1:]), phys),
                "median": (dims, np.median(phys, 1)),
                "quantiles": (("quantile", *dims), q),
                "values": (dims, self.norm[idx] * self.std + self.mean),
                "eval_mask": (dims, (self.observed[idx] & ~given).astype(np.uint8)),
            },
            coords={"quantile": sorted(set(CSDI_QUANTILES) | set(interval_quantiles()))},
        )
        return score_imputation(out, self.mean, self.std)


def _ours(ckpt: Path, data: Data, stays: int, samples: int, ratio: float, sampler: str, steps: int,
          out: Path, weights: str = "ema") -> dict:  # fmt: skip
    cfg = ImputeConfig(
        checkpoint=str(ckpt), data=str(data.store), out=str(out), sampler=sampler, steps=steps,
        members=samples, member_chunk=samples, eval_ratio=ratio, max_stays=stays, device="cpu",
        weights=weights,
    )  # fmt: skip
    return run_imputation(cfg, progress=False)


# ----------------------------------------------------------------------------- speed


def _our_step_seconds(steps: int, warmup: int, seed: int = 0) -> tuple[list[float], int]:
    net = build_seeded(lambda: CSDINet(35), seed)
    sched = make_schedule("csdi_quad")
    den = Denoiser(net, Preconditioning("eps", 1.0, "timestep"), sched)
    opt = torch.optim.AdamW(den.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 48, 35, generator=g)
    observed = (torch.rand(16, 48, 35, generator=g) > 0.8).float()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        cm = random_cond_mask(observed, g)
        cond = Condition(observed=x * cm, mask=cm)
        loss = denoising_loss(den, x * observed, sched, cond, mask=observed - cm, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, sum(p.numel() for p in net.parameters())


def speed(args, data: Data, tmp: Path) -> str:
    torch.set_num_threads(args.threads)
    p = _peer("step-time", "--batch", "16", "--length", "48", "--features", "35", "--steps",
              str(args.repeats), "--warmup", "2", "--seed", "0", "--out", str(tmp / "steps.json"),
              threads=args.threads)  # fmt: skip
    _wait(p)
    peer = json.loads((tmp / "steps.json").read_text())
    ours, params = _our_step_seconds(args.repeats, 2)
    # imputation wall time: PyPOTS fitted one epoch on a few stays (weights do not change the
    # cost), then both impute the same stays with the same number of samples
    idx = data.test(args.stays)
    np.savez(tmp / "speed.npz", train_X=data.norm[np.sort(data.split.train)[:32]],
             test_X=data.hidden(0.1, idx))  # fmt: skip
    _wait(_peer("train-impute", "--data", str(tmp / "speed.npz"), "--epochs", "1", "--samples",
                str(args.samples), "--batch", "16", "--seed", "0", "--out", str(tmp / "speed_out.npz"),
                threads=args.threads))  # fmt: skip
    peer_imp = json.loads((tmp / "speed_out.npz.json").read_text())["impute_seconds"]
    ckpt = args.checkpoint
    rows = [
        "| what | stdiff | PyPOTS 1.5 CSDI | ratio |",
        "|---|---|---|---|",
        f"| training step, batch 16 x 48 x 35, {params:,} vs {peer['params']:,} parameters "
        f"(median of {args.repeats}) | {statistics.median(ours):.3f} s | "
        f"{statistics.median(peer['step_seconds']):.3f} s | "
        f"{statistics.median(peer['step_seconds']) / statistics.median(ours):.2f}x faster |",
    ]
    for sampler, steps in [("ddpm", 50), *args.fast]:
        r = _ours(
            ckpt, data, args.stays, args.samples, 0.1, sampler, steps, tmp / f"sp_{sampler}.zarr"
        )
        rows.append(
            f"| impute {args.stays} stays x {args.samples} samples: stdiff {sampler} "
            f"{r['evals']} evals vs PyPOTS DDPM 50 | {r['seconds']:.1f} s | {peer_imp:.1f} s | "
            f"{peer_imp / r['seconds']:.1f}x faster |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- peer


def peer(args, data: Data, tmp: Path) -> str:
    train_idx = data.split.train[: args.train_stays]  # as data.max_samples takes them
    idx = data.test(args.stays)
    np.savez(tmp / "peer.npz", train_X=data.norm[train_idx], test_X=data.hidden(0.1, idx))
    steps = args.epochs * -(-len(train_idx) // 16)
    run = tmp / "ours_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    cmd = [sys.executable, "-m", "stdiff", "train", "--config",
           str(REPO / "configs/train_physionet_csdi.yaml"), "--set", f"out={run}",
           "--set", f"data.store={data.store}", "--set", f"loop.steps={steps}",
           "--set", "loop.val_every=0", "--set", "loop.sample_every=0",
           "--set", f"loop.checkpoint_every={steps}"]  # fmt: skip
    if args.train_stays:
        cmd += ["--set", f"data.max_samples={args.train_stays}"]
    t0 = time.perf_counter()
    theirs = _peer("train-impute", "--data", str(tmp / "peer.npz"), "--epochs", str(args.epochs),
                   "--samples", str(args.samples), "--batch", "16", "--seed", "0",
                   "--out", str(tmp / "peer_out.npz"), threads=1)  # fmt: skip
    ours = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    _wait(ours)
    our_train = time.perf_counter() - t0
    if args.keep:  # the trained run, for the speed and paper phases
        shutil.copytree(run, args.keep, dirs_exist_ok=True)
    _wait(theirs)
    torch.set_num_threads(1)
    info = json.loads((tmp / "peer_out.npz.json").read_text())
    pm = data.score_peer(np.load(tmp / "peer_out.npz")["samples"], idx, 0.1)
    rows = [
        "| system | training | CRPS | MAE | RMSE | 90 % coverage | impute wall |",
        "|---|---|---|---|---|---|---|",
        f"| PyPOTS 1.5 CSDI, DDPM 50 steps | {args.epochs} epochs ({info['train_steps']} steps), "
        f"{info['train_seconds'] / 60:.1f} min | {pm['crps']:.3f} | {pm['mae']:.3f} | "
        f"{pm['rmse']:.3f} | {pm['cover_90']:.3f} | {info['impute_seconds']:.1f} s |",
    ]
    for sampler, st in [("ddpm", 50), args.fast[0]]:
        r = _ours(
            run, data, args.stays, args.samples, 0.1, sampler, st, tmp / f"peer_{sampler}.zarr"
        )
        m = r["metrics"]
        rows.append(
            f"| stdiff, {sampler} {r['evals']} evals | {args.epochs} epochs ({steps} steps), "
            f"{our_train / 60:.1f} min | {m['crps']:.3f} | {m['mae']:.3f} | {m['rmse']:.3f} | "
            f"{m['cover_90']:.3f} | {r['seconds']:.1f} s |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- paper


def paper(args, data: Data, tmp: Path) -> str:
    torch.set_num_threads(args.threads)
    rows = [
        "| hidden | sampler | evals | CRPS | MAE | RMSE | 50 / 90 % coverage | wall | paper CRPS / MAE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ratio in args.ratios:
        for sampler, steps in [("ddpm", 50), args.fast[0]]:
            r = _ours(args.checkpoint, data, args.stays, args.samples, ratio, sampler, steps,
                      tmp / f"paper_{ratio}_{sampler}.zarr")  # fmt: skip
            m = r["metrics"]
            pc, pm = PAPER.get(ratio, (float("nan"),) * 2)
            rows.append(
                f"| {ratio:.0%} | {sampler} | {r['evals']} | {m['crps']:.3f} | {m['mae']:.3f} | "
                f"{m['rmse']:.3f} | {m['cover_50']:.2f} / {m['cover_90']:.2f} | {r['seconds']:.0f} s | "
                f"{pc} / {pm} |"
            )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- samplers


def samplers(args, data: Data, tmp: Path) -> str:
    """Every checkpoint with every sampler it takes; a one-evaluation generator
    (``loop.objective: crps``) takes only ``consistency:1``, and is compared with the first row
    of the checkpoint before it (its teacher, listed first)."""
    from stdiff.pipelines.engine.runner import check_sampling, load_denoiser

    torch.set_num_threads(args.threads)
    rows = [
        "| checkpoint | weights | sampler | evals | CRPS | vs first row | MAE | RMSE "
        "| 50 / 90 % coverage | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = None
    for i, ckpt in enumerate(args.checkpoint):
        tcfg = load_denoiser(ckpt)[1]
        for k, (sampler, steps) in enumerate(args.samplers):
            try:
                check_sampling(tcfg, sampler, steps, ckpt)
            except ValueError:
                continue
            r = _ours(ckpt, data, args.stays, args.samples, 0.1, sampler, steps,
                      tmp / f"s{i}_{sampler}_{steps}.zarr", args.weights)  # fmt: skip
            m = r["metrics"]
            first = m["crps"] if k == 0 or first is None else first
            rows.append(
                f"| {ckpt.name} | {args.weights} | {sampler} | {r['evals']} | {m['crps']:.3f} | "
                f"{m['crps'] / first - 1:+.1%} | {m['mae']:.3f} | {m['rmse']:.3f} | "
                f"{m['cover_50']:.2f} / {m['cover_90']:.2f} | {r['seconds']:.0f} s |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("phase", choices=["speed", "peer", "paper", "samplers"])
    ap.add_argument("--store", type=Path, default=REPO / "outputs/physio.zarr")
    ap.add_argument("--checkpoint", type=Path, nargs="+", help="trained CSDI run(s): speed, "
                    "paper (the first), samplers (each)")  # fmt: skip
    ap.add_argument("--weights", choices=["ema", "model"], default="ema", help="samplers phase")
    ap.add_argument("--fast", type=sampler_spec, nargs="+", default=[("dpmpp_2m_sde", 10)],
                    help="fast sampler(s): speed times each, peer and paper use the first")  # fmt: skip
    ap.add_argument("--samplers", type=sampler_spec, nargs="+",
                    default=[("ddpm", 50), ("ddpm", 25), ("ddpm", 10), ("ddim", 10),
                             ("dpmpp_2m", 10), ("dpmpp_2m_sde", 20), ("dpmpp_2m_sde", 10),
                             ("dpmpp_2m_sde", 5)])  # fmt: skip
    ap.add_argument("--stays", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-stays", type=int, help="peer: only the first N training stays")
    ap.add_argument("--keep", type=Path, help="peer: copy our trained run folder here")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--write", type=Path, help="markdown file whose section to replace")
    ap.add_argument("--name", help="section id (default: imputation-PHASE), to keep several runs")
    args = ap.parse_args(argv)
    if args.phase != "peer" and args.checkpoint is None:
        sys.exit(f"benchmarks.imputation {args.phase}: --checkpoint is required")
    if args.phase in ("speed", "paper"):
        args.checkpoint = args.checkpoint[0]
    data = Data(args.store)
    with tempfile.TemporaryDirectory() as d:
        phases = {"speed": speed, "peer": peer, "paper": paper, "samplers": samplers}
        body = phases[args.phase](args, data, Path(d))
    cmd = " ".join([".venv/bin/python -m benchmarks.imputation", *(argv or sys.argv[1:])])
    name = args.name or f"imputation-{args.phase}"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    section = (
        f"{begin}\n## {TITLES[args.phase]}\n\n`{cmd}`\n\nMachine: {machine()}\n\n{body}\n{end}\n"
    )
    print(section)
    if args.write:
        write_section(args.write, section, begin, end)


if __name__ == "__main__":
    main()
