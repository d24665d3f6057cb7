"""Batch jobs fanned out over a ``dask.distributed`` cluster (prefect-dask's ``DaskTaskRunner``).

A job whose output is a chunked ``RegionStore`` (imputation: batches of stays or series windows;
forecast: initial times; reconstruction: batches of images) is split into groups of chunks, one task per group, each task a
normal run of the job restricted to its ``chunks``; the last run publishes the store once. The
numbers equal the serial run's (every member has its own generator), and a fan-out killed and
run again computes only the chunks without completion markers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, task

from stdiff.flows.jobs import JOBS, _publish, job_config, run_job


def plan_chunks(job: str, cfg: Any) -> int:
    """How many output chunks ``job`` has (what the fan-out distributes)."""
    if job == "impute":
        from stdiff.pipelines.jobs.impute import plan_chunks as plan
    elif job == "forecast":
        from stdiff.pipelines.jobs.forecast import plan_chunks as plan
    elif job == "reconstruct":
        from stdiff.pipelines.jobs.reconstruct import plan_chunks as plan
    else:
        raise ValueError(f"{job}: no fan-out; choose impute, forecast or reconstruct")
    return plan(cfg)


@task(name="job-chunks", tags=["gpu"])
def chunk_task(job: str, cfg: Any, chunks: list[int]) -> list[int]:
    """Compute some chunks of the job's store (on a Dask worker under ``DaskTaskRunner``)."""
    spec, part = JOBS[job], replace(cfg, chunks=chunks)
    return (spec.run(part, progress=False) if spec.takes_progress else spec.run(part))["computed"]


@flow(name="stdiff-fan-out", validate_parameters=False)
def fan_out_flow(job: str, params: Any, chunks_per_task: int = 1) -> dict[str, Any]:
    """``job``'s chunks computed by parallel tasks, then the store published once."""
    if chunks_per_task < 1:
        raise ValueError(f"chunks_per_task must be at least 1, got {chunks_per_task}")
    cfg = job_config(job, params)
    if getattr(cfg, "calibrate", None) is not None:  # fit the spread once, not in every task
        from stdiff.pipelines.jobs.calibrate import calibrated
        from stdiff.pipelines.jobs.impute import run_imputation

        cfg = replace(calibrated(cfg, run_imputation, progress=False)[0], calibrate=None)
    n = plan_chunks(job, cfg)
    groups = [list(range(a, min(n, a + chunks_per_task))) for a in range(0, n, chunks_per_task)]
    futures = [chunk_task.with_options(task_run_name=f"{job}-chunks-{g[0]}").submit(job, cfg, g)
               for g in groups]  # fmt: skip
    computed = sorted(c for f in futures for c in f.result())
    r = run_job(job, replace(cfg, chunks=None))  # every chunk is done: publishes if no task did
    scored = Path(f"{r['out']}.metrics.json")  # written by the run that scored and published
    if "metrics" not in r and scored.is_file():
        r = {**r, "metrics": json.loads(scored.read_text())["metrics"]}
    rows = {"chunks": n, "computed by tasks": len(computed), "out": r["out"]}
    rows.update({k: v for k, v in r.get("metrics", {}).items() if k != "rank_histogram"})
    _publish(f"{job}-fan-out", f"{job} (fan-out)", rows)
    return {**r, "computed": computed}


def distributed(
    job: str,
    params: Any,
    address: str | None = None,
    n_workers: int = 2,
    chunks_per_task: int = 1,
) -> dict[str, Any]:
    """Run :func:`fan_out_flow` on the scheduler at ``address`` (``tcp://host:8786``) or on a
    ``LocalCluster`` of ``n_workers`` one-thread processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        runner = DaskTaskRunner(address=address)
    else:
        kw = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
        runner = DaskTaskRunner(cluster_kwargs=kw)
    return fan_out_flow.with_options(task_runner=runner)(job, params, chunks_per_task)


def distributed_impute(params: Any, **kw: Any) -> dict[str, Any]:
    """The imputation's chunks of stays (or series windows) fanned out (see :func:`distributed`)."""
    return distributed("impute", params, **kw)


def distributed_forecast(params: Any, **kw: Any) -> dict[str, Any]:
    """The ensemble forecast's initial times fanned out (see :func:`distributed`)."""
    return distributed("forecast", params, **kw)


def distributed_reconstruct(params: Any, **kw: Any) -> dict[str, Any]:
    """The reconstruction's batches of images fanned out (see :func:`distributed`)."""
    return distributed("reconstruct", params, **kw)
