"""Beijing multi-site air quality: stdiff CSDI against linear interpolation and the station mean.

    .venv/bin/python -m benchmarks.beijing --steps 400 --period 2016-03-01:2016-03-31 \\
        --members 20 --write BENCHMARKS.md

The stdiff side runs the CLI's own jobs: ingest of the 12 station CSVs (PM2.5, hourly, CSDI's
AQI-36 split: months 3, 6, 9 and 12 test), training with ``configs/train_beijing_csdi.yaml`` and
the given step budget, imputation of a test period with ``eval_ratio`` of the observed values
hidden. The baselines are scored on the very same hidden points (the imputation output's
``eval_mask``), knowing exactly what the model was given (everything observed but the hidden
points): linear interpolation in time per station (flat beyond the ends), and the station's mean
over the training months. A point forecast's CRPS is its absolute error (all quantiles equal).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from benchmarks.report import emit_section
from stdiff.datasets.ingest import IngestOptions, ingest
from stdiff.datasets.store import open_store
from stdiff.pipelines.engine.config import load_config
from stdiff.pipelines.engine.runner import TrainJobConfig, run_training
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation
from stdiff.pipelines.metrics.scores import CSDI_QUANTILES, point_errors, quantile_crps

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beijing_multisite_air"


SITES = Path(__file__).resolve().parents[1] / "configs" / "beijing_stations.csv"
PRIORS = {  # --prior variants: overrides of configs/train_beijing_csdi.yaml
    "none": {},
    "interp": {"model.params.interp": True},
    "geo": {"model.params.coords": "store"},
    "interp+geo": {"model.params.interp": True, "model.params.coords": "store"},
    "interp+geo+block": {
        "model.params.interp": True,
        "model.params.coords": "store",
        "data.mask": "block",
    },  # long training gaps, as outages are
    # one-evaluation generators trained on the fair CRPS (loop.objective: crps), half the steps:
    # two members per window, so the same network passes as the denoising models
    "crps": {"loop.objective": "crps"},
    "interp+geo+crps": {
        "model.params.interp": True,
        "model.params.coords": "store",
        "loop.objective": "crps",
    },
}


def _ingest(source: Path, out: Path, variables: str, site_coords: Path | None = None) -> Path:
    opt = IngestOptions(
        site_coords=str(site_coords) if site_coords else None,
        kind="timeseries",
        variables=tuple(variables.split(",")),
        time_columns=("year", "month", "day", "hour"),
        drop_columns=("No",),
        categorical="drop",
        freq="1h",
        test_months=(3, 6, 9, 12),
    )
    return ingest(source, out, opt).store


def interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Linear interpolation in time of every column of ``values (T, K)`` from its ``known``
    entries (flat beyond the first and last); a column with nothing known stays NaN."""
    out = np.full(values.shape, np.nan, dtype=np.float64)
    t = np.arange(values.shape[0])
    for k in range(values.shape[1]):
        keep = known[:, k]
        if keep.any():
            out[:, k] = np.interp(t, t[keep], values[keep, k])
    return out


def _point_scores(point: np.ndarray, out: xr.Dataset, mean, std) -> dict[str, float]:
    """CRPS (CSDI's normalised quantile form) and MAE of a point forecast, physical and
    normalised, at the output's evaluation points."""
    mask = out["eval_mask"].astype(float)
    truth = out["values"].fillna(0.0)
    p = xr.DataArray(point, dims=("time", "feature"))
    q = xr.concat([p] * len(CSDI_QUANTILES), "quantile").assign_coords(
        quantile=list(CSDI_QUANTILES)
    )
    m, s = xr.DataArray(mean, dims="feature"), xr.DataArray(std, dims="feature")
    return {
        "crps_physical": quantile_crps(q, truth, mask),
        "mae_physical": point_errors(p, truth, mask)["mae"],
        "crps": quantile_crps((q - m) / s, (truth - m) / s, mask),
        "mae": point_errors((p - m) / s, (truth - m) / s, mask)["mae"],
    }


def baselines(store: Path, out: xr.Dataset) -> dict[str, dict[str, float]]:
    """Linear interpolation and the training mean on the output's evaluation points."""
    ds = open_store(store)
    values = ds["values"].values.astype(np.float64)
    known = ds["observed_mask"].values.astype(bool)
    pos = np.searchsorted(ds["time"].values, out["time"].values)
    known[pos] &= ~out["eval_mask"].values.astype(bool)
    mean = ds["values_mean"].values.astype(np.float64)
    std = ds["values_std"].values.astype(np.float64)
    linear = interpolate(values, known)[pos]
    station_mean = np.broadcast_to(mean, linear.shape)
    return {
        "linear interpolation in time, per station": _point_scores(linear, out, mean, std),
        "station mean (training months)": _point_scores(station_mean, out, mean, std),
    }


def member_jumps(out: xr.Dataset) -> tuple[float, float]:
    """Mean |change| of a member from one hour to the next (in units of each feature's std),
    where the hour's window changes and elsewhere, over imputed entries only (neither hour
    given). Members of independent windows jump at window changes; seamless ones should not."""
    s = out["samples"].values  # (M, T, K)
    std = np.nanstd(out["values"].values, axis=0)
    d = np.abs(np.diff(s, axis=1)) / np.where(std > 0, std, 1.0)  # (M, T-1, K)
    free = out["cond_mask"].values == 0
    t = out["time"].values
    step = np.median(np.diff(t))
    both = free[1:] & free[:-1] & (np.diff(t) == step)[:, None]
    ws = out["window_start"].values
    change = (ws[1:] != ws[:-1])[:, None]
    return float(d[:, both & change].mean()), float(d[:, both & ~change].mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("outputs/bench_beijing"))
    ap.add_argument("--variables", default="PM2.5")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--period", default="2016-03-01:2016-03-31")
    ap.add_argument("--eval-ratio", type=float, default=0.1)
    ap.add_argument("--eval-block", type=int, default=0, help="hide gaps of N hours (0: single)")
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--sampler", default="dpmpp_2m_sde:10")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU)")
    ap.add_argument(
        "--stitch",
        nargs="+",
        default=["seamless", "central"],
        choices=["seamless", "central", "central_unlinked"],
        help="one row per stitching (central_unlinked: central without link_members)",
    )
    ap.add_argument("--prior", nargs="+", choices=list(PRIORS),
                    help="compare the PriSTI-style options instead (central stitching)")  # fmt: skip
    ap.add_argument("--eval-blocks", type=int, nargs="+", default=[0, 24])
    ap.add_argument("--section", default="beijing-prior", help="--prior: the section's name")
    ap.add_argument("--distill", type=Path, metavar="RUN",
                    help="a consistency student of RUN against RUN's samplers")  # fmt: skip
    ap.add_argument("--method", choices=["consistency", "crps"], default="consistency",
                    help="--distill: the student's kind")  # fmt: skip
    ap.add_argument("--no-teacher", action="store_true", help="--distill: the student rows only")
    ap.add_argument("--reuse-none", type=Path, help="--prior none: this run instead of training")
    ap.add_argument("--peer", type=Path, metavar="IMPUTED",
                    help="PyPOTS CSDI on the windows and hidden points of this stdiff output")  # fmt: skip
    ap.add_argument("--write", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.prior:
        return prior_section(a)
    if a.distill:
        from benchmarks.beijing_peer import few_step_section

        return few_step_section(a)
    if a.peer:
        from benchmarks.beijing_peer import peer_section

        return peer_section(a)
    a.work.mkdir(parents=True, exist_ok=True)
    store = _ingest(a.data, a.work / "beijing.zarr", a.variables)
    run = a.work / "train"
    over = {"data.store": str(store), "out": str(run), "loop.steps": a.steps,
            "loop.checkpoint_every": a.steps, "loop.val_every": 0}  # fmt: skip
    t0 = time.perf_counter()
    if not (run / "checkpoints").exists():
        run_training(load_config("configs/train_beijing_csdi.yaml", TrainJobConfig, over))
    train_s = time.perf_counter() - t0
    sampler, steps = a.sampler.split(":")
    rows, jumps = {}, {}
    for stitch in a.stitch:
        cfg = ImputeConfig(checkpoint=str(run), data=str(store),
                           out=str(a.work / f"imputed_{stitch}.zarr"), sampler=sampler,
                           steps=int(steps), members=a.members, eval_ratio=a.eval_ratio,
                           period=a.period.split(":"), overwrite=True,
                           stitch="seamless" if stitch == "seamless" else "central",
                           link_members=stitch != "central_unlinked",
                           eval_pattern="block" if a.eval_block else "random",
                           eval_block=a.eval_block or 24)  # fmt: skip
        result = run_imputation(cfg, progress=False)
        out = xr.open_zarr(cfg.out, consolidated=False).load()
        name = f"stdiff CSDI ({sampler}-{steps}, {a.members} samples, stitch {stitch})"
        rows[name], jumps[name] = result["metrics"], member_jumps(out)
        print(name, result["seconds"], jumps[name], flush=True)
    rows |= baselines(store, out)

    def jump(k: str) -> str:
        if k not in jumps:
            return "-"
        at, elsewhere = jumps[k]
        return f"{at:.2f} / {elsewhere:.2f}"

    lines = [
        "| method | CRPS | MAE (ug/m3) | CRPS (normalised) | MAE (normalised) | member step at "
        "window changes / elsewhere (std) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k} | {v['crps_physical']:.3f} | {v['mae_physical']:.2f} | {v['crps']:.3f} "
            f"| {v['mae']:.3f} | {jump(k)} |"
            for k, v in rows.items()
        ),
    ]
    body = (
        f"Store: 12 stations x {a.variables} (K = {out.sizes['feature']}), hourly, CSDI's AQI-36 "
        f"split (months 3, 6, 9, 12 test). Training: `configs/train_beijing_csdi.yaml` (CSDI "
        f"4 layers x 64 channels, windows of 36 h, `mix` masks, batch 16) for {a.steps} steps "
        f"in {train_s / 60:.0f} min ({a.threads} torch thread) on this shared CPU. Evaluation: test period {a.period}, "
        f"{a.eval_ratio:.0%} of the observed values hidden "
        + (f"in gaps of {a.eval_block} h per station " if a.eval_block else "at random ")
        + f"({result['metrics']['eval_points']} "
        f"points), {result['windows']} windows stitched (`seamless`: tiles of 36 h plus a window "
        "around every seam re-drawing the 18 h about it, each member conditioned on its own "
        "values on both sides; `central`: windows 18 h apart, each hour from its most central "
        "window, members linked across window changes by the least squared step; "
        f"`central_unlinked`: the same draws, labels as drawn), imputed in {result['seconds']:.0f} s each. Every method is scored on the same "
        "hidden points; "
        "CRPS is CSDI's quantile CRPS divided by the sum of |truth| (a point forecast's is its "
        "absolute error over that sum).\n\n" + "\n".join(lines) + "\n"
    )
    (a.work / "scores.json").write_text(json.dumps(rows, indent=1, default=float))
    work = "" if a.work == Path("outputs/bench_beijing") else f"--work {a.work} "
    cmd = (f"`python -m benchmarks.beijing {work}--steps {a.steps} --period {a.period} "
           f"--members {a.members} --sampler {a.sampler} --eval-block {a.eval_block} "
           f"--stitch {' '.join(a.stitch)}`")  # fmt: skip
    name = f"beijing_block{a.eval_block}" if a.eval_block else "beijing"
    title = "CSDI on Beijing multi-site air quality (long series, issue 18)"
    title += f": {a.eval_block}-hour gaps" if a.eval_block else ""
    emit_section(name, title, cmd, body, a.write)


def _train(a, store: Path, run: Path, params: dict) -> float:
    steps = a.steps // 2 if params.get("loop.objective") == "crps" else a.steps  # equal passes
    over = {"data.store": str(store), "out": str(run), "loop.steps": steps,
            "loop.checkpoint_every": steps, "loop.val_every": 0,
            **params}  # fmt: skip
    t0 = time.perf_counter()
    if not (run / "checkpoints").exists():
        run_training(load_config("configs/train_beijing_csdi.yaml", TrainJobConfig, over))
    return time.perf_counter() - t0


def prior_section(a) -> None:
    """One model per ``--prior`` variant (same config, seed and budget), each imputing the test
    period with single hidden hours and with day-long outages (``--eval-blocks``)."""
    a.work.mkdir(parents=True, exist_ok=True)
    store = _ingest(a.data, a.work / "beijing_sites.zarr", a.variables, SITES)
    sampler, steps = a.sampler.split(":")
    lines = ["| model | hidden | CRPS | MAE (ug/m3) | 90 % interval coverage | train s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for variant in a.prior:
        run = a.work / f"train_{variant}"
        if variant == "none" and a.reuse_none:  # the same config, seed and budget, trained before
            run = a.reuse_none
        train_s = _train(a, store, run, PRIORS[variant])
        crps = PRIORS[variant].get("loop.objective") == "crps"  # one evaluation per sample
        for block in a.eval_blocks:
            cfg = ImputeConfig(checkpoint=str(run), data=str(store),
                               out=str(a.work / f"imputed_{variant}_{block}.zarr"),
                               sampler="consistency" if crps else sampler,
                               steps=1 if crps else int(steps), members=a.members,
                               eval_ratio=a.eval_ratio, period=a.period.split(":"),
                               overwrite=True, eval_pattern="block" if block else "random",
                               eval_block=block or 24)  # fmt: skip
            m = run_imputation(cfg, progress=False)["metrics"]
            cov = m.get("cover_90", float("nan"))
            hidden = f"{block} h outages" if block else "single hours"
            lines.append(f"| CSDI, {variant} ({cfg.sampler} {cfg.steps}) | {hidden} | {m['crps_physical']:.3f} | "
                         f"{m['mae_physical']:.2f} | {cov:.2f} | {train_s:.0f} |")  # fmt: skip
            print(lines[-1], flush=True)
    body = (
        f"Store: 12 stations x {a.variables}, hourly, AQI-36 split, site coordinates from "
        "`configs/beijing_stations.csv` (`stdiff ingest --site-coords`). Every model: "
        f"`configs/train_beijing_csdi.yaml`, seed 0, {a.steps} steps, only the overrides named "
        "differing (`interp: true`: the interpolated observations as an input channel; "
        "`coords: store`: the geographic attention bias and coordinate embedding; `+block`: "
        "`data.mask: block`, training targets in runs of up to half a window; `crps`: "
        "`loop.objective: crps`, a one-evaluation generator trained on the fair CRPS of two "
        f"members for {a.steps // 2} steps, the same network passes, sampled with consistency 1). "
        f"Imputation: {a.sampler} (crps: 1 evaluation), {a.members} samples, central stitching, {a.period}, {a.eval_ratio:.0%} of "
        "the observed values hidden (the same points for every model). CRPS normalised by the "
        "sum of |truth| as in the section above; 'train s' is 0 for a model trained earlier.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    cmd = (f"`python -m benchmarks.beijing --prior {' '.join(a.prior)} --steps {a.steps} "
           f"--period {a.period} --members {a.members} --sampler {a.sampler} "
           f"--eval-blocks {' '.join(map(str, a.eval_blocks))} --work {a.work}"
           + (f" --reuse-none {a.reuse_none}`" if a.reuse_none else "`"))  # fmt: skip
    title = "Beijing: the PriSTI-style priors (issues 18, 20)"
    if a.section != "beijing-prior":
        title = "Beijing: one-evaluation generators trained on the CRPS (issue 20)"
    emit_section(a.section, title, cmd + f" (section {a.section})", body, a.write)


if __name__ == "__main__":
    main()
