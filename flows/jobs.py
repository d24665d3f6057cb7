"""Prefect flows over the jobs: thin orchestration over ``pipelines``; tasks pass paths, not tensors.

* ``ingest_flow``: a source to a store (I/O task with retries; a no-op when the store already
  holds the same inputs, by content hash).
* ``train_flow``: ``stdiff train`` from a YAML config (tagged ``gpu`` for a concurrency limit).
* ``impute_flow``, ``forecast_flow``, ``score_flow``, ``reconstruct_flow``, ``generate_flow``:
  the inference and scoring jobs.

Each flow validates its parameters with the job's typed config before any work (a bad value fails
with a message naming the field) and publishes a markdown artifact with its metrics and outputs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from stdiff.pipelines.config import from_dict, load_config


def _publish(key: str, title: str, rows: dict[str, Any]) -> None:
    """A markdown table artifact (key: lowercase letters, digits and dashes)."""
    lines = [f"## {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v if not isinstance(v, float) else f'{v:.4g}'} |" for k, v in rows.items()]
    create_markdown_artifact("\n".join(lines), key=key, description=title)


@task(name="ingest", retries=2, retry_delay_seconds=5)
def ingest_task(source: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    from stdiff.datasets.ingest import IngestOptions, ingest

    opt = from_dict(IngestOptions, options, "ingest:")
    r = ingest(source, out, opt)
    return {"out": str(r.store), "written": r.written, "seconds": r.seconds, "summary": r.summary}


@flow(name="stdiff-ingest")
def ingest_flow(source: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """Ingest ``source`` into the zarr store ``out`` (``options``: ``IngestOptions`` fields)."""
    r = ingest_task(source, out, options)
    _publish("ingest", f"ingest {Path(source).name}", r)
    return r


def torchrun_command(
    config: str, overrides: dict[str, Any], resume: str | None, nproc: int
) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m stdiff train ...`` (DDP: NCCL with one
    GPU per process, gloo on the CPU; the trainer joins the process group itself)."""
    import sys

    import yaml

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "stdiff", "train", "--config", config]  # fmt: skip
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"]
    if resume:
        cmd += ["--resume", resume]
    return cmd


@task(name="train", tags=["gpu"])
def train_task(
    config: str, overrides: dict[str, Any], resume: str | None, nproc: int = 1
) -> dict[str, Any]:
    from stdiff.pipelines.training_job import TrainJobConfig, run_training

    cfg = load_config(config, TrainJobConfig, overrides)
    if nproc > 1:
        import subprocess

        res = subprocess.run(torchrun_command(config, overrides, resume, nproc),
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"torchrun train failed ({res.returncode}): {res.stderr[-2000:]}")
        step = None
    else:
        step = run_training(cfg, resume).step
    metrics = Path(cfg.out) / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.exists() else {}
    return {"run": cfg.out, "processes": nproc, **last,
            "step": step if step is not None else last.get("step")}  # fmt: skip


@flow(name="stdiff-train")
def train_flow(
    config: str,
    overrides: dict[str, Any] | None = None,
    resume: str | None = None,
    nproc: int = 1,
) -> dict[str, Any]:
    """Train from a YAML config (``overrides``: dotted keys) and publish the last metrics;
    ``nproc > 1`` launches data-parallel training through ``torchrun`` on this machine."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    load_config(config, _train_cls(), overrides or {})  # fail fast on a bad config
    r = train_task(config, overrides or {}, resume, nproc)
    _publish("train", f"train {Path(config).stem}", r)
    return r


def _train_cls():
    from stdiff.pipelines.training_job import TrainJobConfig

    return TrainJobConfig


# kind -> (module, config class, run function); each run function takes the config first
JOBS: dict[str, tuple[str, str, str]] = {
    "impute": ("stdiff.pipelines.imputation", "ImputeConfig", "run_imputation"),
    "forecast": ("stdiff.pipelines.forecast", "ForecastConfig", "run_forecast"),
    "score": ("stdiff.pipelines.weather_eval", "ScoreConfig", "run_scoring"),
    "reconstruct": ("stdiff.pipelines.reconstruct", "ReconstructConfig", "run_reconstruction"),
    "generate": ("stdiff.pipelines.generate", "GenerateConfig", "run_generation"),
    "distill": ("stdiff.pipelines.distill", "DistillConfig", "run_distillation"),
}
NO_PROGRESS = ("impute", "forecast", "reconstruct")  # run functions with a progress switch


def _config(kind: str, params: dict[str, Any]) -> Any:
    """The job's typed config from ``params``; ``params["config"]`` may name a YAML file
    (``configs/*.yaml``) whose keys the other params override. A bad value raises naming the
    field (and the file)."""
    module, cls, _ = JOBS[kind]
    cls = getattr(importlib.import_module(module), cls)
    if "config" in params:
        rest = {k: v for k, v in params.items() if k != "config"}
        return load_config(params["config"], cls, rest)
    return from_dict(cls, params, f"{kind}:")


@task(name="job", tags=["gpu"])
def job_task(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the ``kind`` job (inference tasks carry the ``gpu`` tag for a concurrency limit)."""
    module, _, fn = JOBS[kind]
    run = getattr(importlib.import_module(module), fn)
    cfg = _config(kind, params)
    return run(cfg, progress=False) if kind in NO_PROGRESS else run(cfg)


@flow(name="stdiff-impute")
def impute_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff impute`` with ``params`` (``ImputeConfig`` fields: checkpoint, data, out, ...)."""
    _config("impute", params)  # fail fast, before the task runs
    r = job_task("impute", params)
    rows = {k: v for k, v in r.items() if k != "metrics"}
    rows.update({k: v for k, v in r.get("metrics", {}).items() if k != "rank_histogram"})
    _publish("impute", "imputation", rows)
    return r


@flow(name="stdiff-forecast")
def forecast_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff forecast`` with ``params`` (``ForecastConfig`` fields)."""
    _config("forecast", params)
    r = job_task("forecast", params)
    _publish("forecast", "ensemble forecast", r)
    return r


@flow(name="stdiff-score")
def score_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff score`` with ``params`` (``ScoreConfig`` fields); plots are linked in the artifact."""
    cfg = _config("score", params)
    r = job_task("score", params)
    rows: dict[str, Any] = {"lead hours": r["lead_hours"]}
    for var, systems in r["scores"].items():
        for name, s in systems.items():
            rows[f"{var} {name} CRPS"] = " / ".join(f"{x:.3f}" for x in s["crps"])
    out = Path(cfg.out).resolve()
    rows.update(
        {png: f"[{png}](file://{out / png})" for png in ("case_maps.png", "scores_vs_lead.png")}
    )
    _publish("score", "forecast scores", rows)
    return r


@flow(name="stdiff-reconstruct")
def reconstruct_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff reconstruct`` with ``params`` (``ReconstructConfig`` fields); links the PNG grid."""
    _config("reconstruct", params)
    r = job_task("reconstruct", params)
    rows = {k: v for k, v in r.items() if k != "metrics"}
    _publish("reconstruct", "reconstruction", {**rows, **r["metrics"], **_grid_link(r["out"])})
    return r


@flow(name="stdiff-generate")
def generate_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff generate`` with ``params`` (``GenerateConfig`` fields); links the PNG grid."""
    _config("generate", params)
    r = job_task("generate", params)
    rows = {"out": r["out"], **r["metrics"], **_grid_link(r["out"])}
    _publish("generate", "class-conditional samples", rows)
    return r


@flow(name="stdiff-distill")
def distill_flow(params: dict[str, Any]) -> dict[str, Any]:
    """``stdiff distill`` with ``params`` (``DistillConfig`` fields, or ``config``: a YAML file)."""
    _config("distill", params)
    r = job_task("distill", params)
    rows = {s["run"]: f"{s['sampler']} x {s['steps']} ({s['spacing']})" for s in r["students"]}
    _publish("distill", f"{r['method']} distillation", {**rows, "seconds": r["seconds"]})
    return r


def _grid_link(out: str) -> dict[str, str]:
    """The artifact row linking the PNG grid written beside the output store."""
    png = Path(f"{out}.png").resolve()
    return {"grid": f"[{png.name}](file://{png})"}


@task(name="impute-chunk", tags=["gpu"])
def impute_chunk_task(params: dict[str, Any], chunks: list[int]) -> list[int]:
    """Compute some chunks of an imputation store (on a Dask worker under ``DaskTaskRunner``)."""
    from stdiff.pipelines.imputation import run_imputation

    return run_imputation(_config("impute", {**params, "chunks": chunks}), progress=False)[
        "computed"
    ]


@flow(name="stdiff-impute-fan-out")
def impute_fan_out_flow(params: dict[str, Any], chunks_per_task: int = 1) -> dict[str, Any]:
    """``impute_flow`` with the store's chunks computed by parallel tasks, then published once.

    Run it through :func:`distributed_impute` (a ``DaskTaskRunner``); killed and run again, it
    computes only the chunks without completion markers."""
    from stdiff.pipelines.imputation import plan_chunks

    n = plan_chunks(_config("impute", params))
    groups = [list(range(a, min(n, a + chunks_per_task))) for a in range(0, n, chunks_per_task)]
    futures = [impute_chunk_task.submit(params, g) for g in groups]
    computed = sorted(c for f in futures for c in f.result())
    r = job_task("impute", params)  # every chunk is done: this scores and publishes the store
    rows = {"chunks": n, "computed by tasks": len(computed), "out": r["out"]}
    rows.update({k: v for k, v in r.get("metrics", {}).items() if k != "rank_histogram"})
    _publish("impute-fan-out", "imputation (fan-out)", rows)
    return {**r, "computed": computed}


def distributed_impute(
    params: dict[str, Any],
    address: str | None = None,
    n_workers: int = 2,
    chunks_per_task: int = 1,
) -> dict[str, Any]:
    """Run :func:`impute_fan_out_flow` on a ``dask.distributed`` cluster: the scheduler at
    ``address`` (``tcp://host:8786``), or a ``LocalCluster`` of ``n_workers`` one-thread
    processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        runner = DaskTaskRunner(address=address)
    else:
        kw = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
        runner = DaskTaskRunner(cluster_kwargs=kw)
    return impute_fan_out_flow.with_options(task_runner=runner)(params, chunks_per_task)
