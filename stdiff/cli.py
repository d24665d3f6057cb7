"""The ``stdiff`` command line. Each sub-command calls one ``pipelines`` function; errors in the
user's input are printed as one line naming the file or parameter, with a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stdiff.cli_more import calibrate, info
from stdiff.cliargs import csv_flag, fail, job_config, pairs_flag, period_flag, set_overrides
from stdiff.help import epilog

app = typer.Typer(
    name="stdiff",
    help="Conditional spatiotemporal diffusion: training, sampling and evaluation jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def demo(
    config: Annotated[Path, typer.Option(help="YAML config (ToyDemoConfig).")] = Path(
        "configs/demo_toy2d.yaml"
    ),
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("outputs/demo"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
    flow: Annotated[
        bool, typer.Option(help="Run as a Prefect flow instead of in-process.")
    ] = False,
) -> None:
    """Train a small denoiser on 2-D data, sample it with several samplers, report distances."""
    from stdiff.pipelines.engine.config import load_config
    from stdiff.pipelines.jobs.toy import ToyDemoConfig, run_demo

    try:
        cfg = load_config(config, ToyDemoConfig, set_overrides(set_))
    except ValueError as e:
        fail(str(e))
    if flow:
        from stdiff.flows.demo import toy_demo_flow

        metrics = toy_demo_flow(str(config), str(out), set_overrides(set_))
    else:
        metrics = run_demo(cfg, out)
    t = metrics["train"]
    typer.echo(
        f"trained {cfg.train.steps} steps in {t['seconds']:.1f} s: "
        f"loss {t['loss_first_10pct']:.4f} -> {t['loss_last_10pct']:.4f}"
    )
    typer.echo(
        f"energy distance to held-out data (data-vs-data floor {metrics['energy_distance_floor']:.5f}):"
    )
    for name, m in metrics["samplers"].items():
        typer.echo(
            f"  {name:<16} {m['steps']:>4} steps {m['evaluations'] or '-':>5} evals  "
            f"energy distance {m['energy_distance']:.5f}  ({m['seconds']:.2f} s)"
        )
    typer.echo(f"wrote {out}/checkpoint.safetensors, samples.zarr, samples.png, metrics.json")


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("outputs/quickstart"),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 4,
) -> None:
    """Ingest -> train -> forecast -> score -> report on the NCEP sample, as a Prefect flow run
    (Prefect's local ephemeral server unless PREFECT_API_URL points at a server)."""
    if steps < 1 or members < 1:
        fail("quickstart: --steps and --members must be at least 1")
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry
    from stdiff.flows.quickstart import quickstart_flow

    r = quickstart_flow(out=str(out), steps=steps, members=members)
    typer.echo(f"quickstart done. Report: {r['report']}")
    typer.echo(f"  store:     {r['store']}\n  model:     {r['run']}\n  forecast:  {r['forecast']}")
    typer.echo(f"  scores and plots: {Path(r['out']) / 'scores'}")
    for var, systems in r["scores"]["scores"].items():
        crps = {n: s["crps"][-1] for n, s in systems.items()}
        typer.echo(
            f"  {var} CRPS at {r['scores']['lead_hours'][-1]:g} h: "
            + ", ".join(f"{n} {v:.3f}" for n, v in crps.items())
        )


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="Serve YAML (flows.serve.ServeConfig).")] = Path(
        "configs/serve.yaml"
    ),
    check: Annotated[
        bool, typer.Option(help="Validate and list the deployments, do not serve.")
    ] = False,
) -> None:
    """Register deployments with cron schedules and serve their runs (needs PREFECT_API_URL)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from stdiff.flows.serve import ServeConfig, check_inputs
    from stdiff.flows.serve import serve as run_serve
    from stdiff.pipelines.engine.config import load_config

    try:
        cfg = load_config(config, ServeConfig)
        check_inputs(cfg, f"{config}: serve")
    except ValueError as e:
        fail(str(e))
    for d in cfg.deployments:
        typer.echo(f"{d.name}: flow {d.flow}, cron {d.cron or '-'} ({d.timezone})")
    if check:
        typer.echo("parameters and inputs checked; not serving (--check)")
        return
    run_serve(cfg)


@app.command()
def ingest(
    source: Annotated[
        list[str],
        typer.Argument(help="Input file, folder or zarr URL; or several per-station tables."),
    ],
    kind: Annotated[str, typer.Option(help="weather | timeseries | images | medical")],
    out: Annotated[Path, typer.Option(help="Output zarr store (written atomically).")],
    variables: Annotated[str | None, typer.Option(help="Comma-separated variables.")] = None,
    levels: Annotated[str | None, typer.Option(help="Comma-separated levels (weather).")] = None,
    coarsen: Annotated[int, typer.Option(help="Block-mean factor on lat/lon (weather).")] = 1,
    train_period: Annotated[
        str | None, typer.Option(help="Weather or table training period START:END.")
    ] = None,
    test_period: Annotated[
        str | None, typer.Option(help="Weather or table test period START:END.")
    ] = None,
    fold: Annotated[int, typer.Option(help="CSDI fold for PhysioNet statistics (0-4).")] = 0,
    layout: Annotated[
        str, typer.Option(help="Table layout: wide | long | stays (one table per stay).")
    ] = "wide",
    stay_length: Annotated[
        int | None, typer.Option(help="--layout stays: steps kept per stay (default: longest).")
    ] = None,
    time_column: Annotated[str, typer.Option(help="Table time column.")] = "time",
    targets: Annotated[
        str | None, typer.Option(help="Table evaluation targets: a column or a second file.")
    ] = None,
    time_columns: Annotated[
        str | None,
        typer.Option(help="Table time split over columns year,month,day[,hour[,minute[,second]]]."),
    ] = None,
    station_column: Annotated[
        str | None,
        typer.Option(
            help="Tables: the station column (default: 'station' if any, else file name)."
        ),
    ] = None,
    drop_columns: Annotated[
        str | None, typer.Option(help="Tables: comma-separated columns to leave out.")
    ] = None,
    categorical: Annotated[
        str, typer.Option(help="Tables, text columns: error | drop | onehot.")
    ] = "error",
    freq: Annotated[
        str | None, typer.Option(help="Tables: regular time grid, e.g. 1h (lacking steps: empty).")
    ] = None,
    site_coords: Annotated[
        str | None,
        typer.Option(
            help="Per-station tables: a CSV station,lat,lon (degrees) stored as side information."
        ),
    ] = None,
    test_months: Annotated[
        str | None, typer.Option(help="Table series: test months, e.g. 3,6,9,12 (CSDI AQI-36).")
    ] = None,
    missing_values: Annotated[
        str | None, typer.Option(help="Tables: values meaning missing, e.g. -200,-999.")
    ] = None,
    valid_months: Annotated[
        str | None, typer.Option(help="Table series: validation months, e.g. 1.")
    ] = None,
    axis: Annotated[str, typer.Option(help="NIfTI slicing axis.")] = "axial",
    image_size: Annotated[
        int | None,
        typer.Option(
            help="--kind images: a volume's slice size (default 64), or N to resize "
            "folder images to N x N."
        ),
    ] = None,
    window: Annotated[
        str,
        typer.Option(
            help="A volume as --kind images: intensity window LO,HI (HU for CT, e.g. -1000,400), "
            "a preset (brain, subdural, stroke, lung, mediastinum, soft_tissue, abdomen, liver, "
            "bone) or auto (per scan: 99.5th percentile)."
        ),
    ] = "auto",
    images_key: Annotated[str | None, typer.Option(help="NPZ array holding the images.")] = None,
    labels_key: Annotated[
        str | None, typer.Option(help="NPZ array holding the labels (none: unlabelled).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(help="Images: auto (the source's), or train / test for every image."),
    ] = "auto",
    fill_nan: Annotated[
        str, typer.Option(help="Weather NaN at some times: error | mean (the training mean).")
    ] = "error",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier ingest of other data at --out.")
    ] = False,
) -> None:
    """Ingest a source into a canonical zarr v3 store (a no-op when it is already there)."""
    from stdiff.datasets.ingest import IngestOptions
    from stdiff.datasets.ingest import ingest as run_ingest

    try:
        opt = IngestOptions(
            kind=kind,  # type: ignore[arg-type]
            variables=csv_flag(variables),
            levels=csv_flag(levels, float),
            coarsen=coarsen,
            train_period=period_flag(train_period, "train-period"),
            test_period=period_flag(test_period, "test-period"),
            fold=fold,
            layout=layout,  # type: ignore[arg-type]
            stay_length=stay_length,
            time_column=time_column,
            targets=targets,
            time_columns=csv_flag(time_columns),
            station_column=station_column,
            drop_columns=csv_flag(drop_columns) or (),
            categorical=categorical,  # type: ignore[arg-type]
            freq=freq,
            site_coords=site_coords,
            test_months=csv_flag(test_months, int),
            valid_months=csv_flag(valid_months, int),
            missing_values=csv_flag(missing_values, float) or (),
            axis=axis,  # type: ignore[arg-type]
            image_size=image_size or 64,
            resize_images=image_size is not None,
            window=window,
            images_key=images_key,
            labels_key=labels_key,
            split=split,  # type: ignore[arg-type]
            fill_nan=fill_nan,  # type: ignore[arg-type]
        )
        result = run_ingest(
            source[0] if len(source) == 1 else source,
            out,
            opt,
            progress=progress,
            overwrite=overwrite,
        )
    except ValueError as e:  # DataError is a ValueError: one line naming the file
        fail(str(e))
    typer.echo(
        f"{result.summary} [{'written' if result.written else 'unchanged'} in {result.seconds:.1f} s]"
    )


@app.command(epilog=epilog("train"))
def train(
    config: Annotated[Path, typer.Option(help="YAML config (TrainJobConfig).")],
    resume: Annotated[
        Path | None, typer.Option(help="Run folder or checkpoint folder to resume from.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for another run holding the run folder, do not refuse.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(help="Start afresh in a folder holding an earlier run (restored on failure)."),
    ] = False,
) -> None:
    """Train a denoiser on a store from `stdiff ingest` (EMA, checkpoints, exact resume)."""
    from stdiff.pipelines.engine.config import load_config
    from stdiff.pipelines.engine.runner import TrainJobConfig, run_training

    try:
        cfg = load_config(config, TrainJobConfig, set_overrides(set_))
        state = run_training(cfg, resume, wait, overwrite)
    except ValueError as e:
        fail(str(e))
    k = max(1, len(state.losses) // 10)
    if state.losses:
        first, last = sum(state.losses[:k]) / k, sum(state.losses[-k:]) / k
        typer.echo(f"trained to step {state.step}: loss {first:.4f} -> {last:.4f}")
    typer.echo(f"checkpoints and metrics.jsonl in {cfg.out}")


@app.command(epilog=epilog("distill"))
def distill(
    config: Annotated[Path, typer.Option(help="YAML config (DistillConfig).")],
    teacher: Annotated[
        Path | None, typer.Option(help="Trained run folder (overrides the config's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Students' folder.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
) -> None:
    """Distil a trained model into a few-step student (progressive or consistency)."""
    from stdiff.pipelines.engine.config import load_config
    from stdiff.pipelines.jobs.distill import DistillConfig, run_distillation

    given = {"teacher": teacher, "out": out}
    overrides = {**{k: str(v) for k, v in given.items() if v is not None}, **set_overrides(set_)}
    try:
        r = run_distillation(load_config(config, DistillConfig, overrides))
    except ValueError as e:
        fail(str(e))
    for s in r["students"]:
        typer.echo(
            f"{s['run']}: sample with --sampler {s['sampler']} --steps {s['steps']}"
            f" --spacing {s['spacing']}"
        )
    typer.echo(f"{r['method']} distillation done in {r['seconds']:.0f} s")


@app.command(epilog=epilog("impute"))
def impute(
    checkpoint: Annotated[Path, typer.Option(help="Training run folder or step_* checkpoint.")],
    data: Annotated[Path, typer.Option(help="Timeseries store from `stdiff ingest`.")],
    out: Annotated[Path, typer.Option(help="Output zarr store.")],
    sampler: Annotated[
        str | None, typer.Option(help="Registered sampler (stdiff info); default ddpm.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps; default 50.")] = None,
    members: Annotated[int | None, typer.Option(help="Samples per stay; default 100.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with further ImputeConfig keys.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier output of this job at --out.")
    ] = False,
) -> None:
    """Fill the gaps of a timeseries store with N samples each (median, quantiles, intervals)."""
    from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

    given = {"sampler": sampler, "steps": steps, "members": members}
    base = {"checkpoint": str(checkpoint), "data": str(data), "out": str(out)}
    base.update({k: v for k, v in given.items() if v is not None})
    if overwrite:
        base["overwrite"] = True
    try:
        cfg = job_config(ImputeConfig, base, set_, config, "impute:")
        result = run_imputation(cfg)
    except (ValueError, FloatingPointError) as e:  # DataError is a ValueError
        fail(str(e))
    what = (
        f"{result['stays']} stays"
        if "stays" in result
        else f"{result['time_steps']} time steps ({result['windows']} windows)"
    )
    typer.echo(
        f"{result['out']}: {what} x {result['members']} members, "
        f"{cfg.sampler} {cfg.steps} steps ({result['evals']} evaluations) in {result['seconds']:.1f} s"
    )
    if "metrics" in result:
        m = result["metrics"]
        typer.echo(
            f"CRPS {m['crps']:.4f}  MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  "
            f"90% coverage {m['cover_90']:.3f}  ({m['eval_points']} points)"
        )
        typer.echo(
            f"physical units: CRPS {m['crps_physical']:.4f}  MAE {m['mae_physical']:.4g}  "
            f"RMSE {m['rmse_physical']:.4g}"
        )


@app.command(epilog=epilog("reconstruct"))
def reconstruct(
    checkpoint: Annotated[Path, typer.Option(help="Image model run folder or step_* checkpoint.")],
    data: Annotated[Path, typer.Option(help="Images store from `stdiff ingest --kind images`.")],
    out: Annotated[Path, typer.Option(help="Output zarr store (a PNG grid is written beside it).")],
    task: Annotated[str, typer.Option(help="inpaint | outpaint | superres | deblur | mri | ct")],
    method: Annotated[
        str | None,
        typer.Option(help="replacement | repaint | dps | consistency (default per task)"),
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help="Registered sampler (default per task).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps; default 50.")] = None,
    members: Annotated[int | None, typer.Option(help="Samples per image; default 4.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with further ReconstructConfig keys.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier output of this job at --out.")
    ] = False,
) -> None:
    """Inpaint, outpaint, super-resolve, deblur, or reconstruct MRI / CT with uncertainty."""
    from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, run_reconstruction

    given = {"method": method, "sampler": sampler, "steps": steps, "members": members}
    base = {"checkpoint": str(checkpoint), "data": str(data), "out": str(out), "task": task}
    base.update({k: v for k, v in given.items() if v is not None})
    if overwrite:
        base["overwrite"] = True
    try:
        cfg = job_config(ReconstructConfig, base, set_, config, "reconstruct:")
        r = run_reconstruction(cfg, progress=True)
    except ValueError as e:  # DataError is a ValueError
        fail(str(e))
    if not r.get("metrics"):
        typer.echo(f"{r['out']}: computed chunks {r['computed']}; pending {r['pending']}")
        return
    m = r["metrics"]
    typer.echo(
        f"{r['out']}: {r['images']} images x {m['members']} members, {cfg.inverse().method} with "
        f"{cfg.inverse().sampler} ({r['evals']} evaluations) in {r['seconds']:.1f} s\n"
        f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  (baseline {m['baseline_psnr']:.2f} dB / "
        f"{m['baseline_ssim']:.3f});  truth within mean +- 2 std: {m['within_2std']:.2f}"
    )


@app.command(epilog=epilog("generate"))
def generate(
    checkpoint: Annotated[Path, typer.Option(help="Class-conditional image model run folder.")],
    out: Annotated[Path, typer.Option(help="Output zarr store (a PNG grid is written beside it).")],
    label: Annotated[
        list[int] | None, typer.Option(help="Class to draw (repeatable); default every class.")
    ] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight w >= 0.")] = 1.0,
    n: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    classifier: Annotated[
        Path | None, typer.Option(help="Classifier folder: report accuracy and Frechet distance.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with further GenerateConfig keys.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier output of this job at --out.")
    ] = False,
) -> None:
    """Class-conditional samples with classifier-free guidance."""
    from stdiff.pipelines.jobs.generate import GenerateConfig, run_generation

    base = {"checkpoint": str(checkpoint), "out": str(out), "guidance": guidance, "n": n}
    if label:
        base["labels"] = list(label)
    if classifier is not None:
        base["classifier"] = str(classifier)
    if overwrite:
        base["overwrite"] = True
    try:
        cfg = job_config(GenerateConfig, base, set_, config, "generate:")
        r = run_generation(cfg)
    except ValueError as e:
        fail(str(e))
    m = r["metrics"]
    line = f"{r['out']}: {cfg.n} samples, w = {cfg.guidance:g}, {r['seconds']:.1f} s"
    if "accuracy" in m:
        line += f"; classifier accuracy {m['accuracy']:.3f}, Frechet {m['frechet_classifier']:.2f}"
    typer.echo(line)


@app.command(epilog=epilog("forecast"))
def forecast(
    checkpoint: Annotated[Path, typer.Option(help="Training run folder or step_* checkpoint.")],
    data: Annotated[Path, typer.Option(help="Weather store from `stdiff ingest --kind weather`.")],
    out: Annotated[Path, typer.Option(help="Output zarr store.")],
    init: Annotated[
        list[str], typer.Option(help="Initial time (2014-06-01T00) or START/END/EVERY; repeatable.")
    ],
    lead: Annotated[
        str,
        typer.Option(help="Forecast length: 72h, 3d, 12steps, or 3months on a monthly model."),
    ] = "72h",
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 8,
    layout: Annotated[
        str,
        typer.Option(
            help="Output names: wb2 (time, realization, prediction_timedelta, "
            "latitude, longitude) | stdiff (init_time, member, lead_time, lat, lon)."
        ),
    ] = "wb2",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a ForecastConfig key: KEY=VALUE.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier output of this job at --out.")
    ] = False,
) -> None:
    """Roll an ensemble forward from initial times (GenCast's sampler by default; its dispersion
    with --set churn=X / --set noise_inflation=Y)."""
    from stdiff.pipelines.engine.config import from_dict, nested
    from stdiff.pipelines.jobs.forecast import ForecastConfig, run_forecast

    base = {"checkpoint": str(checkpoint), "data": str(data), "out": str(out), "init": init,
            "lead": lead, "members": members, "layout": layout, "overwrite": overwrite}  # fmt: skip
    try:
        cfg = from_dict(ForecastConfig, nested({**base, **set_overrides(set_)}), "forecast:")
        r = run_forecast(cfg)
    except (ValueError, FloatingPointError) as e:  # DataError is a ValueError
        fail(str(e))
    typer.echo(
        f"{r['out']}: {r['inits']} initial times x {r['members']} members x {r['lead_steps']} steps "
        f"of {r['step']} in {r['seconds']:.1f} s ({r['seconds_per_member_step']:.3f} s per member "
        "per step)"
    )


@app.command()
def score(
    forecast: Annotated[list[str], typer.Option(help="NAME=STORE of a forecast; repeatable.")],
    data: Annotated[Path, typer.Option(help="Weather store with the truth.")],
    out: Annotated[Path, typer.Option(help="Folder for scores.json, scores.csv and plots.")],
    climatology_period: Annotated[
        str | None,
        typer.Option(
            help="START:END of the climatology data; default: the data before the "
            "first initial time (a period holding verified times is refused)."
        ),
    ] = None,
) -> None:
    """Score forecasts (RMSE, fair CRPS, spread-skill, rank histogram) beside persistence and
    climatology, WeatherBench 2 style."""
    from stdiff.pipelines.jobs.score import ScoreConfig, run_scoring

    try:
        pairs = pairs_flag(forecast)
        period = period_flag(climatology_period, "climatology-period")
        r = run_scoring(ScoreConfig(pairs, str(data), str(out), list(period) if period else None))
    except ValueError as e:
        fail(str(e))
    for v, systems in r["scores"].items():
        typer.echo(f"{v}: lead (h) {r['lead_hours']}")
        for name, s in systems.items():
            typer.echo(f"  {name:>12} CRPS {' '.join(f'{x:.3f}' for x in s['crps'])}")
            typer.echo(f"  {'':>12} RMSE {' '.join(f'{x:.3f}' for x in s['rmse'])}")
            if "spread_skill" in s:
                typer.echo(f"  {'':>12} SSR  {' '.join(f'{x:.3f}' for x in s['spread_skill'])}")
            if vs := s.get("crps_vs_first"):  # % of the first forecast's CRPS, 95 % interval
                diffs = zip(vs["percent"], vs["half_width"], strict=True)
                pct = " ".join(f"{m:+.1f}±{h:.1f}" for m, h in diffs)
                typer.echo(f"  {'':>12} CRPS vs {vs['against']} (%) {pct}")
    typer.echo(f"scores and plots in {out}")


app.command()(info)
app.command()(calibrate)


def main(argv: list[str] | None = None) -> int:
    """The command line inside the error boundary (``stdiff.boundary``); returns the exit code.
    ``--debug`` (anywhere) or ``STDIFF_DEBUG=1`` shows the traceback of an internal error."""
    import os
    import sys

    from stdiff import boundary

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("STDIFF_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    return boundary.run(lambda: app(args=args, prog_name="stdiff", standalone_mode=False), debug)


def entry() -> None:
    """The ``stdiff`` console script."""
    import sys

    sys.exit(main())


if __name__ == "__main__":
    entry()
