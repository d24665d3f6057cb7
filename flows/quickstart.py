"""The quickstart: ingest -> train -> forecast -> score -> report on small real data, offline.

``quickstart_flow`` runs the whole weather job on the NCEP air-temperature sample kept in the
repository (``datasets/samples``, public domain): ingest into a zarr store (training statistics
from January-February 2013), train a small conditional DiT for ``steps`` steps, forecast an
ensemble from initial times in March (held out), score it against persistence and climatology,
and write ``REPORT.md`` with the scores and links to the plots. A few minutes on 2 CPU cores.
The climatology comes from the training months only, with a +-45-day window (the sample is short).
Point it at full datasets with ``source`` and the periods (or use the other flows with configs).

Run again into the same ``out``, it reuses the store (same inputs: the ingest is a no-op),
continues the training from its last checkpoint (a run already at ``steps`` is used as it is) and
replaces the forecast and the scores, which are its own outputs. The training logs its progress
(step, loss, samples/s) to the flow run's log ten times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from stdiff.flows.jobs import _publish, ingest_task, run_job, train_task
from stdiff.pipelines.engine.resources import shipped_config, shipped_sample

SAMPLE = shipped_sample("ncep_air_2013q1.nc")
CONFIG = shipped_config("quickstart_forecast.yaml")


@flow(name="stdiff-quickstart")
def quickstart_flow(
    out: str = "outputs/quickstart",
    source: str = str(SAMPLE),
    steps: int = 300,
    members: int = 4,
    inits: str = "2013-03-10T00/2013-03-28T00/48h",
    lead: str = "24h",
    train_period: tuple[str, str] = ("2013-01-01", "2013-02-28"),
    test_period: tuple[str, str] = ("2013-03-08", "2013-03-31"),
) -> dict[str, Any]:
    """Run the quickstart into ``out``; returns the paths and the scores."""
    log = get_run_logger()
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log.info(f"quickstart into {root}: ingest, train {steps} steps, forecast, score, report")
    store = ingest_task(source, str(root / "air.zarr"), {"kind": "weather",
                        "train_period": list(train_period), "test_period": list(test_period)})["out"]  # fmt: skip
    trained = train_task(str(CONFIG), {"out": str(root / "train"), "data.store": store,
                                       "data.train_period": list(train_period),
                                       "loop.steps": steps, "loop.checkpoint_every": steps,
                                       "loop.val_every": steps,
                                       "loop.log_every": max(1, steps // 10)},
                         _earlier_run(root / "train"))  # fmt: skip
    forecast = run_job("forecast", {"checkpoint": trained["run"], "data": store,
                                     "out": str(root / "forecast.zarr"), "init": [inits],
                                     "lead": lead, "members": members, "member_batch": members,
                                     "overwrite": True})  # fmt: skip
    scores = run_job("score", {"forecasts": {"stdiff": forecast["out"]}, "data": store,
                                "out": str(root / "scores"),
                                "climatology_period": list(train_period),
                                "window_days": 45})  # fmt: skip
    report = write_report(root, trained, forecast, scores)
    log.info(f"quickstart done: {report}")
    rows: dict[str, Any] = {"report": f"[REPORT.md](file://{report})", "store": store,
                            "checkpoint": trained["run"], "forecast": forecast["out"]}  # fmt: skip
    for var, systems in scores["scores"].items():
        for name, s in systems.items():
            rows[f"{var} {name} CRPS"] = " / ".join(f"{x:.3f}" for x in s["crps"])
    _publish("quickstart", "stdiff quickstart", rows)
    return {"out": str(root), "report": str(report), "store": store, "run": trained["run"],
            "forecast": forecast["out"], "scores": scores}  # fmt: skip


def _earlier_run(run: Path) -> str | None:
    """The quickstart's earlier training run to continue (resume), if it left a checkpoint."""
    return str(run) if (run / "checkpoints").is_dir() else None


REPORTED = (("crps", "CRPS (K)"), ("rmse", "RMSE (K)"), ("spread_skill", "spread-skill ratio"))


def _worse_than_baselines(var: str, systems: dict, hours: list[float]) -> list[str]:
    """Plain sentences for every lead at which the stdiff ensemble is worse than a baseline
    (a report that shows only where it wins hides what a user most needs to know)."""
    ours, out = systems.get("stdiff"), []
    for base in ("persistence", "climatology"):
        if ours is None or base not in systems:
            continue
        for key in ("crps", "rmse"):
            worse = [f"{h:g} h" for h, a, b in zip(hours, ours[key], systems[base][key], strict=True)
                     if a >= b]  # fmt: skip
            if worse:
                out.append(f"- {var}: the stdiff {key.upper()} is not better than {base} at "
                           + ", ".join(worse) + ".")  # fmt: skip
    return [*out, ""] if out else [f"- {var}: stdiff beats persistence and climatology in CRPS "
                                   "and RMSE at every lead.", ""]  # fmt: skip


def write_report(root: Path, trained: dict, forecast: dict, scores: dict) -> Path:
    """``REPORT.md``: what ran, the scores per lead against the baselines, links to plots."""
    hours = scores["lead_hours"]
    lines = [
        "# stdiff quickstart report",
        "",
        f"- store: `{root / 'air.zarr'}`",
        f"- model: `{trained['run']}` (step {trained['step']}, final loss "
        f"{trained.get('loss', float('nan')):.3f})",
        f"- forecast: `{forecast['out']}` ({forecast['inits']} initial times x "
        f"{forecast['members']} members, {forecast['seconds']:.1f} s)",
        f"- scores: `{root / 'scores/scores.csv'}`; plots: "
        + ", ".join(
            f"[{p.name}](scores/{p.name})" for p in sorted((root / "scores").glob("*.png"))
        ),
        "",
    ]
    for var, systems in scores["scores"].items():
        for key, title in REPORTED:
            rows = {n: s[key] for n, s in systems.items() if key in s}
            lines += [f"## {var}: {title} by lead", "",
                      "| system | " + " | ".join(f"{h:g} h" for h in hours) + " |",
                      "|---|" + "---|" * len(hours)]  # fmt: skip
            lines += [
                f"| {n} | " + " | ".join(f"{x:.3f}" for x in r) + " |" for n, r in rows.items()
            ]
            lines.append("")
        lines += _worse_than_baselines(var, systems, hours)
    path = root / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path
