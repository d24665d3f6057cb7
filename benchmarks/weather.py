"""Ensemble weather forecasts on NCEP air temperature: the conditional DiT against the
deterministic model of the same backbone, persistence and climatology (WeatherBench 2 scores).

    .venv/bin/python -m benchmarks.weather --ensemble outputs/train_ncep_dit \\
        --deterministic outputs/train_ncep_det --write BENCHMARKS.md

Both checkpoints come from ``stdiff train --config configs/train_ncep_{dit,det}.yaml`` (trained
on 2013-01-01..2013-11-30, December 2013 held out). The forecasts start at 00 UTC every
``--every`` of 2014 and run to ``--lead``; the ensemble has ``--members`` members with GenCast's
sampler (DPM-Solver++(2S), 20 levels, churn). The goals checked (issue 6): ensemble CRPS and RMSE
better than persistence and climatology at every lead, RMSE better than the deterministic model
beyond 24 h, spread-skill ratio in [0.8, 1.2] from 24 h, rank histogram within a factor 1.5 of
flat. Cost: seconds per member per 6-hour step, and the process's peak resident memory. The plots
go to ``benchmarks/figures/``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from benchmarks.report import emit_section, machine, write_section
from stdiff.datasets.store import open_store
from stdiff.datasets.weather import latitude_weights
from stdiff.diffusion.samplers import get_sampler
from stdiff.pipelines.jobs.forecast import ForecastConfig, parse_inits, run_forecast
from stdiff.pipelines.jobs.score import (
    ScoreConfig,
    climatology,
    persistence,
    run_scoring,
    score_system,
    truth_at,
)

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "benchmarks/figures"


def _fmt(xs: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in xs)


FEW_KEYS = ("churn", "noise_inflation", "spread", "sigma_max", "sigma_min", "rho", "seed")


def parse_few(spec: str) -> dict:
    """``SAMPLER:STEPS[:KEY=VALUE,...]`` with ``ForecastConfig``'s ``churn``, ``noise_inflation``,
    ``spread``, ``sigma_max``, ``sigma_min``, ``rho`` or ``seed``, e.g. ``dpmpp_2s:2`` (3
    evaluations per member step, GenCast's churn), ``dpmpp_2m:4:sigma_max=10,spread=1.2`` (4, an
    ODE ensemble on other noise levels, inflated), ``dpmpp_2m:4:spread=1.15/1.3`` (a factor per
    rollout step, the last kept) or ``dpmpp_2s:20:seed=1`` (the default sampler's other draws)."""
    sampler, steps, *rest = spec.split(":")
    kw: dict = {"sampler": sampler, "steps": int(steps)}
    for item in filter(None, ",".join(rest).split(",")):
        key, value = item.split("=")
        if key not in FEW_KEYS:
            raise SystemExit(f"--few {spec}: {key} is not one of {', '.join(FEW_KEYS)}")
        parts = [float(v) for v in value.split("/")]
        kw[key] = int(parts[0]) if key == "seed" else parts if len(parts) > 1 else parts[0]
    kw["evals"] = get_sampler(sampler).evals(int(steps))
    return kw


GEN = "crps generator"  # the rows of --generator checkpoints start with it


def run(args) -> tuple[str, str]:
    torch.set_num_threads(args.threads)
    init = [f"{args.first_init}/{args.last_init}/{args.every}"]
    few = {spec: parse_few(spec) for spec in args.few}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kw = {"data": str(args.store), "init": init, "lead": args.lead, "device": "cpu"}
        ens = run_forecast(ForecastConfig(checkpoint=str(args.ensemble), out=str(tmp / "ens.zarr"),
                                          members=args.members, member_batch=args.members, **kw),
                           progress=False)  # fmt: skip
        det = run_forecast(ForecastConfig(checkpoint=str(args.deterministic), out=str(tmp / "det.zarr"), **kw),
                           progress=False)  # fmt: skip
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        systems = {"ensemble": ens["out"], "deterministic": det["out"]}
        cost = {"ensemble": ens["seconds_per_member_step"]}
        for path in args.generator:  # loop.objective: crps checkpoints: one evaluation a step
            few[f"{GEN} `{path}`"] = {"checkpoint": str(path), "sampler": "consistency",
                                     "steps": 1, "evals": 1}  # fmt: skip
        for i, (spec, opts) in enumerate(few.items()):
            cfg = {"checkpoint": str(args.ensemble)} | {
                k: v for k, v in opts.items() if k != "evals"
            }
            r = run_forecast(ForecastConfig(out=str(tmp / f"few{i}.zarr"), members=args.members,
                                            member_batch=args.members, **cfg, **kw), progress=False)  # fmt: skip
            systems[spec], cost[spec] = r["out"], r["seconds_per_member_step"]
        scores = run_scoring(
            ScoreConfig(systems, str(args.store), str(tmp / "scores"), args.climatology)
        )
        FIGURES.mkdir(parents=True, exist_ok=True)
        for png in ("scores_vs_lead.png", "rank_histogram.png", "case_maps.png"):
            shutil.copy(tmp / "scores" / png, FIGURES / f"weather_{png}")
    hours = scores["lead_hours"]
    s = scores["scores"]["air"]
    rows = [
        f"Forecasts: {scores['inits']} initial times (00 UTC, {args.first_init} to {args.last_init}, every "
        f"{args.every}), leads {hours[0]:g}-{hours[-1]:g} h, {args.members} members. Leads in the "
        f"columns: {' / '.join(f'{h:g}' for h in hours)} h.",
        "",
        "| system | CRPS (K) | ensemble-mean RMSE (K) |",
        "|---|---|---|",
    ]
    for name in ("ensemble", "deterministic", "persistence", "climatology"):
        rows.append(f"| {name} | {_fmt(s[name]['crps'])} | {_fmt(s[name]['rmse'])} |")
    ssr = s["ensemble"]["spread_skill"]
    hist = np.asarray(s["ensemble"]["rank_histogram"], dtype=float)
    flat = hist / hist.mean()
    h = np.asarray(hours)
    late = h > 24
    goals = {
        "CRPS below persistence and climatology at every lead": all(
            e < min(p, c) for e, p, c in zip(s["ensemble"]["crps"], s["persistence"]["crps"], s["climatology"]["crps"], strict=True)
        ),
        "RMSE below persistence and climatology at every lead": all(
            e < min(p, c) for e, p, c in zip(s["ensemble"]["rmse"], s["persistence"]["rmse"], s["climatology"]["rmse"], strict=True)
        ),
        "RMSE below the deterministic model beyond 24 h": bool(
            (np.asarray(s["ensemble"]["rmse"])[late] < np.asarray(s["deterministic"]["rmse"])[late]).all()
        ),
        "spread-skill in [0.8, 1.2] from 24 h": bool(
            ((np.asarray(ssr)[h >= 24] >= 0.8) & (np.asarray(ssr)[h >= 24] <= 1.2)).all()
        ),
        "rank histogram within 1.5x of flat": bool(flat.max() <= 1.5 and flat.min() >= 1 / 1.5),
    }  # fmt: skip
    rows += [
        "",
        f"Spread-skill ratio by lead: {_fmt(ssr)}. Rank histogram (leads >= 24 h), frequency over "
        f"flat from the lowest rank: {_fmt(flat.tolist())}.",
        "",
        "| goal (issue 6) | met |",
        "|---|---|",
        *[f"| {g} | {'yes' if ok else 'no'} |" for g, ok in goals.items()],
        "",
        f"Cost on this CPU ({args.threads} threads): ensemble {ens['seconds_per_member_step']:.3f} s per member "
        f"per 6-hour step ({ens['seconds']:.0f} s in all, 39 network evaluations per step); deterministic "
        f"{det['seconds_per_member_step']:.4f} s per step. Peak resident memory of the process: {peak_mb:.0f} MB. "
        "No GPU was available to this run.",
        "",
        "Plots: `benchmarks/figures/weather_case_maps.png` (truth / ensemble mean / spread), "
        "`weather_scores_vs_lead.png`, `weather_rank_histogram.png`.",
    ]
    few_rows = few_table(s, few, cost, hours, args) if few else ""  # --few, --generator
    return "\n".join(rows), few_rows


def _paired(s: dict, spec: str) -> str:
    """``spec``'s CRPS against the 39-evaluation ensemble's (the scoring job's first forecast), in
    %, with the 95 % interval over initial times; ``*`` where the interval excludes 0."""
    vs = s[spec]["crps_vs_first"]
    return " / ".join(f"{m:+.1f}±{h:.1f}{'*' if abs(m) > h else ''}"
                      for m, h in zip(vs["percent"], vs["half_width"], strict=True))  # fmt: skip


def few_table(s: dict, few: dict, cost: dict, hours: list, args) -> str:
    """Few-evaluation ensembles of the same checkpoint against its 39-evaluation sampler, scored
    together on the same initial times; the CRPS difference per lead with its 95 % interval."""
    rows = [
        f"The ensemble checkpoint sampled with at most 4 network evaluations per member step, against "
        f"GenCast's sampler (DPM-Solver++(2S), 20 levels, churn: 39 evaluations), {args.members} members, "
        f"the same {len(hours)} leads ({hours[0]:g}-{hours[-1]:g} h) and "
        "initial times as the section above, scored in the same run. Columns by lead."
        + (" The rows of a `crps generator` are other checkpoints of the same backbone, "
           "one-evaluation generators on the fair CRPS of two members (`loop.objective: crps`, "
           "or `stdiff distill --method crps` from a diffusion checkpoint; their configs give "
           "the training budget), sampled with `--sampler consistency --steps 1`."
           if args.generator else "")
        + " The CRPS difference is each row's against the first row's, in % of the first row's, "
        "paired over initial times: mean ± the half-width of its 95 % Student-t interval, * where "
        "the interval excludes 0.",
        "",
        "| sampler | evals per member step | s per member step | CRPS (K) | CRPS difference (%) | ensemble-mean RMSE (K) | spread-skill |",
        "|---|---|---|---|---|---|---|",
        f"| dpmpp_2s:20 (GenCast, default) | 39 | {cost['ensemble']:.3f} | {_fmt(s['ensemble']['crps'])} | "
        f"reference | {_fmt(s['ensemble']['rmse'])} | {_fmt(s['ensemble']['spread_skill'])} |",
    ]  # fmt: skip
    for spec, opts in few.items():
        f = s[spec]
        rows.append(f"| {spec} | {opts['evals']} | {cost[spec]:.3f} | {_fmt(f['crps'])} | "
                    f"{_paired(s, spec)} | {_fmt(f['rmse'])} | {_fmt(f['spread_skill'])} |")  # fmt: skip
    return "\n".join(rows)


def _pole_closed_weights(lat: xr.DataArray) -> xr.DataArray:
    """The weights before issue 18, for comparison only: outer cells closed at the poles, as if
    every grid were global (NCEP's 15N row then holds 64 % of the total)."""
    rad = np.deg2rad(np.sort(lat.values.astype(np.float64)))
    bounds = np.concatenate([[-np.pi / 2], (rad[:-1] + rad[1:]) / 2, [np.pi / 2]])
    w = np.diff(np.sin(bounds))
    w = w[np.argsort(np.argsort(lat.values))]
    return xr.DataArray(w / w.mean(), dims="lat", coords={"lat": lat.values})


def baselines(args) -> str:
    """Persistence and climatology on the benchmark's initial times and leads, scored with the
    area weights and with the pole-closed weights they replace (no checkpoint needed)."""
    data = open_store(args.store)
    inits = parse_inits([f"{args.first_init}/{args.last_init}/{args.every}"], str(args.store))
    hours = np.arange(6, float(args.lead.rstrip("h")) + 1, 6)
    leads = (hours * 3600).astype("timedelta64[s]").astype("timedelta64[ns]")
    fc = xr.Dataset(coords={"init_time": inits, "lead_time": leads})
    fc = fc.assign_coords(valid_time=fc["init_time"] + fc["lead_time"])
    truth = truth_at(data, fc, "air").load()
    systems = {"persistence": persistence(data, fc, "air").load(),
               "climatology": climatology(data, fc, "air", list(args.climatology), 15)}  # fmt: skip
    rows = [
        f"{len(inits)} initial times (00 UTC, {args.first_init} to {args.last_init}, every {args.every}), "
        f"leads {hours[0]:g}-{hours[-1]:g} h every 6 h; climatology from {args.climatology[0]} to "
        f"{args.climatology[1]} (15-day window). NCEP's 15N row holds "
        f"{float(latitude_weights(data['lat']).sel(lat=15.0)) / data.sizes['lat']:.1%} of the "
        f"weight now, {float(_pole_closed_weights(data['lat']).sel(lat=15.0)) / data.sizes['lat']:.1%} before.",
        "",
        "| system | weights | CRPS (K) | RMSE (K) |",
        "|---|---|---|---|",
    ]  # fmt: skip
    for name, f in systems.items():
        for label, w in (("area (now)", latitude_weights(data["lat"])),
                         ("pole-closed (before)", _pole_closed_weights(data["lat"]))):  # fmt: skip
            s = score_system(f, truth, w, 24.0)
            rows.append(f"| {name} | {label} | {_fmt(s['crps'])} | {_fmt(s['rmse'])} |")
    return "\n".join(rows)


def cost(args) -> str:
    """Quiet-machine cost: one forecast of ``--cost-inits`` initial times to the lead."""
    torch.set_num_threads(args.threads)
    rows = [
        "| forecast | members x steps | s per member per 6-hour step | peak RSS |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as d:
        kw = {"data": str(args.store), "init": [f"2014-06-01T00/2014-06-{args.cost_inits:02d}T00/24h"],
              "lead": args.lead, "device": "cpu"}  # fmt: skip
        for name, ckpt, members in (("ensemble (DPM-Solver++ 2S, 20 levels, churn)", args.ensemble, args.members),
                                    ("deterministic", args.deterministic, 1)):  # fmt: skip
            r = run_forecast(ForecastConfig(checkpoint=str(ckpt), out=f"{d}/{members}.zarr", members=members,
                                            member_batch=members, **kw), progress=False)  # fmt: skip
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append(
                f"| {name} | {r['members']} x {r['lead_steps']} | {r['seconds_per_member_step']:.3f} s | {peak:.0f} MB |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--store", type=Path, default=REPO / "outputs/ncep.zarr")
    ap.add_argument("--ensemble", type=Path)
    ap.add_argument("--deterministic", type=Path)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--lead", default="72h")
    ap.add_argument("--every", default="240h")
    ap.add_argument("--first-init", default="2014-01-01T00")
    ap.add_argument("--last-init", default="2014-12-27T00")
    ap.add_argument("--climatology", nargs=2, default=["2013-01-01", "2013-11-30"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", type=Path)
    ap.add_argument(
        "--cost-only", action="store_true", help="only time a short forecast (quiet machine)"
    )
    ap.add_argument("--cost-inits", type=int, default=2)
    ap.add_argument("--generator", type=Path, nargs="*", default=[],
                    help="loop.objective: crps checkpoints, scored with --few")  # fmt: skip
    ap.add_argument("--few-section", default="weather-few-step", help="--few's section name")
    ap.add_argument("--few", nargs="*", default=[], metavar="SAMPLER:STEPS[:churn=C,...]",
                    help="also the ensemble with these few-step samplers (section weather-few-step)")  # fmt: skip
    ap.add_argument(
        "--baselines-only",
        action="store_true",
        help="only persistence and climatology, with the area and the old pole-closed weights",
    )
    args = ap.parse_args(argv)
    if not args.baselines_only and not (args.ensemble and args.deterministic):
        ap.error("--ensemble and --deterministic are required (except with --baselines-only)")
    mode = "baselines" if args.baselines_only else "cost" if args.cost_only else "run"
    tag = {"baselines": "weather-baselines", "cost": "weather-cost", "run": "weather"}[mode]
    begin, end = f"<!-- BEGIN {tag} -->", f"<!-- END {tag} -->"
    body = {"baselines": baselines, "cost": cost, "run": run}[mode](args)
    body, few = body if isinstance(body, tuple) else (body, "")
    cmd = " ".join([".venv/bin/python -m benchmarks.weather", *(argv or sys.argv[1:])])
    title = {"baselines": "baselines and latitude weights", "cost": "cost on a quiet machine",
             "run": "ensemble forecasts"}[mode]  # fmt: skip
    section = f"{begin}\n## Weather, NCEP air temperature: {title}\n\n`{cmd}`\n\nMachine: {machine()}\n\n{body}\n{end}\n"
    print(section)
    if args.write:
        write_section(args.write, section, begin, end)
    if few:
        emit_section(args.few_section, "Weather, NCEP air temperature: ensembles in <= 4 "
                     "evaluations per member step", f"`{cmd}`", few, args.write)  # fmt: skip


if __name__ == "__main__":
    main()
