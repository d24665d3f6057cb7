"""PyPOTS 1.5 CSDI on the Beijing windows that a stdiff imputation used (issue 18's peer row).

    python -m benchmarks.beijing --peer outputs/bench_beijing/imputed_central.zarr --steps 400

Given a finished ``stdiff impute`` output of the Beijing store (its ``window_start`` says which
window every output hour came from, its ``eval_mask`` which values were hidden), PyPOTS's CSDI
(``benchmarks/peer_pypots.py``, the paper's configuration, eps-prediction, DDPM 50 steps) is
trained for the same number of steps at batch 16 on the same training split (``--steps`` x 16
windows of 36 h drawn from the training months, one epoch, PyPOTS's ``random`` target masks),
then imputes exactly the same windows with exactly the same values given, and every hour is
taken from the same window as in the stdiff output. Both are scored by stdiff's scoring code on
the same hidden points. The peer runs in its own venv (``benchmarks/make_peer_venv.sh pypots``).

    python -m benchmarks.beijing --distill outputs/bench_beijing/train --steps 400 --members 10

distils a consistency student from a Beijing checkpoint and imputes the same test period with
the teacher (DDPM 50, SDE-DPM-Solver++ 10 and 4) and the student (1 and 2 evaluations).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import xarray as xr

from benchmarks.imputation import _peer, _wait
from benchmarks.report import emit_section
from stdiff.datasets.store import open_store
from stdiff.datasets.windows import window_starts
from stdiff.pipelines.jobs.impute_core import score_imputation
from stdiff.pipelines.metrics.scores import CSDI_QUANTILES, interval_quantiles

REPO = Path(__file__).resolve().parents[1]


def _windows(out: xr.Dataset):
    """(store, its positions of the output hours, window starts, owner of every hour, config)."""
    cfg = json.loads(out.attrs["config"])
    store = open_store(cfg["data"])
    pos = np.searchsorted(store["time"].values, out["time"].values)
    first = np.searchsorted(store["time"].values, out["window_start"].values)
    starts, owner = np.unique(first, return_inverse=True)
    return store, pos, starts, owner, cfg


def peer_section(a) -> None:
    out = xr.open_zarr(a.peer, consolidated=False).load()
    store, pos, starts, owner, cfg = _windows(out)
    L = int(json.loads(out.attrs["result"])["window"])
    mean = store["values_mean"].values.astype(np.float32)
    std = store["values_std"].values.astype(np.float32)
    norm = ((store["values"].values - mean) / std).astype(np.float32)  # NaN = missing
    cond = store["observed_mask"].values.astype(bool)
    cond[pos] &= ~out["eval_mask"].values.astype(bool)  # the hidden points, as stdiff had them
    train = window_starts(np.flatnonzero(store["split"].values == 0), L, 1)
    rs = np.random.RandomState(0)
    pick = np.sort(rs.choice(train, a.steps * 16, replace=len(train) < a.steps * 16))
    test_x = np.stack([np.where(cond[s : s + L], norm[s : s + L], np.nan) for s in starts])
    tmp = a.work / "peer"
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "peer.npz", train_X=np.stack([norm[s : s + L] for s in pick]), test_X=test_x)
    t0 = time.perf_counter()
    _wait(_peer("train-impute", "--data", str(tmp / "peer.npz"), "--epochs", "1", "--samples",
                str(a.members), "--batch", "16", "--seed", "0", "--out",
                str(tmp / "peer_out.npz"), threads=a.threads))  # fmt: skip
    wall = time.perf_counter() - t0
    info = json.loads((tmp / "peer_out.npz.json").read_text())
    samples = np.load(tmp / "peer_out.npz")["samples"]  # (W, S, L, K), normalised
    offset = pos - starts[owner]
    draws = samples[owner, :, offset] * std + mean  # (N, S, K) in physical units
    theirs = _score(out, np.moveaxis(draws, 1, 0), mean, std)
    ours = score_imputation(out, mean, std)
    rows = ["| system | training | sampler | CRPS | MAE (ug/m3) | 90 % coverage |",
            "|---|---|---|---|---|---|",
            f"| PyPOTS 1.5 CSDI (eps) | {info['train_steps']} steps at batch 16, "
            f"{info['train_seconds'] / 60:.1f} min | DDPM 50 | {theirs['crps_physical']:.3f} | "
            f"{theirs['mae_physical']:.2f} | {theirs['cover_90']:.2f} |",
            f"| stdiff CSDI (v), this output | {a.steps} steps at batch 16 | "
            f"{cfg['sampler']} {cfg['steps']} | {ours['crps_physical']:.3f} | "
            f"{ours['mae_physical']:.2f} | {ours['cover_90']:.2f} |"]  # fmt: skip
    body = (f"The windows ({len(starts)} of {L} h, as stdiff cut them) and the {int(out['eval_mask'].sum())} "
            f"hidden points of `{a.peer}`; {a.members} samples each; PyPOTS wall time "
            f"{wall / 60:.1f} min (train and impute, {a.threads} thread).\n\n" + "\n".join(rows))  # fmt: skip
    cmd = f"`python -m benchmarks.beijing --peer {a.peer} --steps {a.steps} --members {a.members}`"
    emit_section("beijing-peer", "Beijing: PyPOTS CSDI on the same windows (issue 18)", cmd, body,
                 a.write)  # fmt: skip


def _score(out: xr.Dataset, samples: np.ndarray, mean, std) -> dict:
    """stdiff's scores of ``samples`` ``(member, time, feature)`` (physical) on ``out``'s points."""
    qs = sorted(set(CSDI_QUANTILES) | set(interval_quantiles()))
    ds = xr.Dataset(
        {
            "samples": (("member", "time", "feature"), samples.astype(np.float32)),
            "median": (("time", "feature"), np.median(samples, 0)),
            "quantiles": (("quantile", "time", "feature"), np.quantile(samples, qs, axis=0)),
            "values": out["values"],
            "eval_mask": out["eval_mask"],
        },
        coords={"quantile": qs},
    )
    return score_imputation(ds, mean, std)


def few_step_section(a) -> None:
    """Issue 20's 1-2 evaluation imputation: a student distilled from the Beijing checkpoint
    ``a.distill`` (``stdiff distill --method consistency`` or ``crps``, ``a.steps`` steps at
    batch 16, the teacher's own data and masks) against the teacher's samplers, all imputing
    the same test period with the same hidden points and members."""
    from stdiff.pipelines.jobs.distill import run_distillation

    out = a.work / {"consistency": "distill_cd", "crps": "distill_crps"}[a.method]
    cfg = load_distill(a, out)
    t0 = time.perf_counter()
    run_distillation(cfg)
    distill_s = time.perf_counter() - t0
    store = cfg_store(a.distill)
    student = str(out / a.method)
    runs = [("teacher", str(a.distill), "ddpm", 50, "default", a.members),
            ("teacher", str(a.distill), "dpmpp_2m_sde", 10, "default", a.members),
            ("teacher", str(a.distill), "dpmpp_2m_sde", 4, "default", a.members)]  # fmt: skip
    if a.method == "consistency":
        runs += [("consistency student", student, "consistency", 1, "default", a.members),
                 ("consistency student", student, "consistency", 2, "uniform_t", a.members)]  # fmt: skip
    else:  # one evaluation per sample: more samples are affordable, for the intervals
        runs += [("crps student", student, "consistency", 1, "default", m)
                 for m in (a.members, 5 * a.members)]  # fmt: skip
    if a.no_teacher:  # the teacher's rows are in the section of an earlier distillation
        runs = [r for r in runs if r[0] != "teacher"]
    lines = ["| model | sampler | evaluations | samples | CRPS | MAE (ug/m3) | 90 % coverage "
             "| impute s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for who, ckpt, sampler, steps, spacing, members in runs:
        lines.append(_few_row(a, store, who, ckpt, sampler, steps, spacing, members))
        print(lines[-1], flush=True)
    how = (f"consistency distillation, {cfg.levels} levels, {cfg.distance}"
           if a.method == "consistency" else "the teacher fine-tuned on the fair CRPS of two "
           "members (`configs/distill_beijing_crps.yaml`)")  # fmt: skip
    took = (f"{distill_s / 60:.0f} min on a shared CPU" if distill_s > 60
            else "trained before this run, its stage found finished")  # fmt: skip
    body = (f"Teacher `{a.distill}` (CSDI, v-prediction, {_trained_steps(a.distill)} steps); "
            f"student: {how}, {a.steps} steps at batch 16 ({took}). Imputation of "
            f"{a.period}, {a.eval_ratio:.0%} of the observed values hidden (the same points in "
            "every row), central stitching.\n\n" + "\n".join(lines))  # fmt: skip
    cmd = (f"`python -m benchmarks.beijing --distill {a.distill} --method {a.method} "
           f"--steps {a.steps} --members {a.members} --work {a.work}"
           + (" --no-teacher`" if a.no_teacher else "`"))  # fmt: skip
    name = {"consistency": "beijing-few-step", "crps": "beijing-crps-distill"}[a.method]
    title = "Beijing: imputation in 1-2 evaluations (issue 20)"
    if a.method == "consistency" and a.no_teacher:
        name, title = f"{name}-{a.steps}", f"{title}, {a.steps} distillation steps"
    if a.method == "crps":
        title = "Beijing: the CSDI model fine-tuned on the CRPS, one evaluation (issue 20)"
    emit_section(name, title, cmd, body, a.write)


def _few_row(a, store, who, ckpt, sampler, steps, spacing, members) -> str:
    from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

    icfg = ImputeConfig(checkpoint=ckpt, data=store, sampler=sampler, steps=steps,
                        spacing=spacing, members=members, eval_ratio=a.eval_ratio,
                        period=a.period.split(":"), overwrite=True,
                        out=str(a.work / f"few_{sampler}_{steps}_{members}.zarr"))  # fmt: skip
    r = run_imputation(icfg, progress=False)
    m = r["metrics"]
    return (
        f"| {who} | {sampler} {steps} | {r['evals']} | {members} | {m['crps_physical']:.3f} "
        f"| {m['mae_physical']:.2f} | {m['cover_90']:.2f} | {r['seconds']:.0f} |"
    )


def _trained_steps(run) -> int:
    """The step of a training run's latest checkpoint."""
    from stdiff.pipelines.engine.checkpoint import latest_checkpoint

    return int(latest_checkpoint(Path(run)).name.split("_")[-1])


def cfg_store(run) -> str:
    """The store a training run was trained on."""
    from stdiff.pipelines.engine.runner import load_denoiser

    return load_denoiser(run)[1].data.store


def load_distill(a, out):
    from stdiff.pipelines.engine.config import load_config
    from stdiff.pipelines.engine.train import LoopConfig, OptimConfig
    from stdiff.pipelines.jobs.distill import DistillConfig

    if a.method == "crps":  # the shipped config, with this run's teacher, folder and budget
        over = {"teacher": str(a.distill), "out": str(out), "stage_steps": a.steps,
                "loop.progress": False}  # fmt: skip
        return load_config(REPO / "configs/distill_beijing_crps.yaml", DistillConfig, over)
    return DistillConfig(
        teacher=str(a.distill), out=str(out), method="consistency", levels=18,
        distance="pseudo_huber", stage_steps=a.steps, seed=0,
        optim=OptimConfig(lr=1e-4, warmup_steps=0, lr_schedule="constant", grad_clip=1.0),
        loop=LoopConfig(batch_size=16, ema_decay=0.99, log_every=25, checkpoint_every=100,
                        val_every=0, progress=False),
    )  # fmt: skip
