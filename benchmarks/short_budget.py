"""Short budgets: CSDI imputation quality on PhysioNet against training steps, from 0.

    .venv/bin/python -m benchmarks.short_budget --write BENCHMARKS.md

The shipped config (``configs/train_physionet_csdi.yaml``: CSDI 4 x 64, CSDI's quad schedule)
is trained once per parameterisation (``eps``, as the paper, and ``v``) for ``--steps`` steps
with a checkpoint every ``--every``; each checkpoint (and the initial weights, step 0) imputes the
same first ``--stays`` test stays (fold 0) with 10 % of the observed values hidden (CSDI's mask,
seed 1), with and without clipping the predictions to the training data's range (``clip_x0``).
Scores in normalised units; the training mean (predicting 0) has CRPS 1 by construction. The two
trainings run at once with one thread each; the MultiStepLR drops of the config happen at 75 % and
90 % of ``--steps``, so an early checkpoint has seen the full learning rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from benchmarks.report import emit_section
from stdiff.diffusion.rng import member_seed
from stdiff.pipelines.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stdiff.pipelines.engine.models import build_net
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation
from stdiff.pipelines.metrics.scores import point_errors

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/train_physionet_csdi.yaml"


def _train(store: Path, out: Path, prediction: str, steps: int, every: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "stdiff", "train", "--config", str(CONFIG),
            "--set", f"out={out}", "--set", f"data.store={store}", "--set", "device=cpu",
            "--set", f"model.prediction={prediction}", "--set", f"loop.steps={steps}",
            "--set", f"loop.checkpoint_every={every}", "--set", "loop.sample_every=0",
            "--set", "loop.val_every=0", "--set", "loop.progress=false", "--overwrite"]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _step0(run: Path) -> Path:
    """A checkpoint of the initial weights (the training's own seeded init), beside the others."""
    first = sorted((run / "checkpoints").glob("step_*"))[0] / "weights.safetensors"
    _, config, meta = load_checkpoint(first)
    m = config["model"]
    net = build_net(m["net"], m["params"], member_seed(config["seed"], 1))
    folder = run / "checkpoints" / "step_000000000"
    folder.mkdir(exist_ok=True)
    sd = net.state_dict()
    ema = {k: v.clone() for k, v in sd.items()}
    save_checkpoint(folder / "weights.safetensors", {"model": sd, "ema": ema}, config, meta)
    return folder


def _score(ckpt: Path, store: Path, out: Path, args, clip: bool) -> dict:
    cfg = ImputeConfig(checkpoint=str(ckpt), data=str(store), out=str(out), sampler=args.sampler,
                       steps=args.sampler_steps, members=args.members, max_stays=args.stays,
                       eval_ratio=0.1, device="cpu", clip_x0=clip, overwrite=True)  # fmt: skip
    r = run_imputation(cfg, progress=False)
    m = r["metrics"]
    return {
        "crps": m["crps"],
        "mae": m["mae"],
        "cover90": m.get("cover_90"),
        "clipped": r.get("x0_clipped"),
        "max_abs": _max_abs(out, ckpt),
    }


def _max_abs(out: Path, ckpt: Path) -> float:
    """The largest |sample| in normalised units."""
    _, _, meta = load_checkpoint(Path(ckpt) / "weights.safetensors")
    mean = np.asarray(meta["stats"]["values_mean"])
    std = np.asarray(meta["stats"]["values_std"])
    s = xr.open_zarr(out, consolidated=False)["samples"].values
    return float(np.nanmax(np.abs((s - mean) / std)))


def _mean_baseline(out: Path, ckpt: Path) -> float:
    """CRPS-as-MAE of predicting the training mean (0 in normalised units), on the same points."""
    _, _, meta = load_checkpoint(Path(ckpt) / "weights.safetensors")
    ds = xr.open_zarr(out, consolidated=False)
    mean = xr.DataArray(np.asarray(meta["stats"]["values_mean"]), dims="feature")
    std = xr.DataArray(np.asarray(meta["stats"]["values_std"]), dims="feature")
    truth = ((ds["values"] - mean) / std).fillna(0.0)
    mask = ds["eval_mask"].astype(float)
    err = point_errors(xr.zeros_like(truth), truth, mask)["mae"]
    return err * float(mask.sum()) / float((abs(truth) * mask).sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=REPO / "outputs/physio.zarr")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--evaluate", type=int, nargs="+", default=[0, 50, 100, 200, 400])
    ap.add_argument("--stays", type=int, default=16)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--sampler", default="dpmpp_2m_sde")
    ap.add_argument("--sampler-steps", type=int, default=10)
    ap.add_argument("--runs", type=Path, default=REPO / "outputs/short_budget")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    if not args.store.exists():
        sys.exit(f"{args.store}: ingest PhysioNet first (see configs/train_physionet_csdi.yaml)")
    runs = {p: args.runs / p for p in ("eps", "v")}
    todo = [(p, r) for p, r in runs.items() if latest_checkpoint(r) is None]
    procs = [_train(args.store, r, p, args.steps, args.every) for p, r in todo]
    for p in procs:
        if p.wait() != 0:
            sys.exit(p.stderr.read().decode()[-2000:])
    rows, baseline = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for pred, run in runs.items():
            _step0(run)
            for step in args.evaluate:
                ckpt = run / "checkpoints" / f"step_{step:09d}"
                for clip in (False, True):
                    out = Path(tmp) / f"{pred}_{step}_{clip}.zarr"
                    s = _score(ckpt, args.store, out, args, clip)
                    baseline = baseline if baseline is not None else _mean_baseline(out, ckpt)
                    rows.append((pred, step, clip, s))
                    print(pred, step, clip, json.dumps(s), flush=True)
    _report(rows, baseline, args)


def _report(rows, baseline: float, args) -> None:
    lines = ["| prediction | training steps | clip_x0 | CRPS | MAE | 90 % coverage | "
             "final predictions clipped | max abs sample |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for pred, step, clip, s in rows:
        cov = f"{s['cover90']:.2f}" if s["cover90"] is not None else "-"
        clipped = f"{s['clipped']:.2%}" if s["clipped"] is not None else "-"
        lines.append(f"| {pred} | {step} | {'yes' if clip else 'no'} | {s['crps']:.3f} | "
                     f"{s['mae']:.3f} | {cov} | {clipped} | {s['max_abs']:.1f} |")  # fmt: skip
    lines.append(f"| training mean (predict 0) | - | - | {baseline:.3f} | - | - | - | - |")
    body = (
        f"Shipped CSDI config, trained {args.steps} steps per parameterisation (checkpoints every "
        f"{args.every}; step 0 = the seeded initial weights), {args.stays} test stays x "
        f"{args.members} samples, {args.sampler} {args.sampler_steps} steps, 10 % of the observed "
        "values hidden; normalised units.\n\n" + "\n".join(lines)
    )
    cmd = "`.venv/bin/python -m benchmarks.short_budget " + " ".join(sys.argv[1:]) + "`"
    emit_section("short-budget", "CSDI on PhysioNet: quality against training steps, from 0",
                 cmd, body, args.write)  # fmt: skip


if __name__ == "__main__":
    main()
