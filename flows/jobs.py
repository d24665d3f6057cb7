"""Prefect flows over the jobs: thin orchestration over ``pipelines``; tasks pass paths, not tensors.

* ``ingest_flow``: a source to a store (I/O task with retries; a no-op when the store already
  holds the same inputs, by content hash).
* ``train_flow``: ``stdiff train`` from a YAML config (tagged ``gpu`` for a concurrency limit);
  its progress (step, loss, samples/s from ``metrics.jsonl``) goes to the flow run's log.
* ``impute_flow``, ``forecast_flow``, ``score_flow``, ``reconstruct_flow``, ``generate_flow``,
  ``distill_flow``: the inference, scoring and distillation jobs.

Each job flow takes one typed parameter, ``params``: the job's config class (``ImputeConfig``,
``ForecastConfig``, ...), so a deployment shows a form and a parameter schema with every field.
Prefect's own (pydantic) validation is off for these flows: the flow validates ``params`` with
``pipelines.engine.config.from_dict``, the CLI's validator, so a bad value fails with the CLI's message
naming the field, before any task runs. ``params`` may be a config object or a mapping of its
fields; ``params["config"]`` may name a YAML file whose keys the other fields override.

Retries: only the I/O task (ingest) retries, and only on errors that may pass by themselves
(:func:`transient`); a bad input (``ValueError``, ``DataError``) or a missing file fails at once.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from stdiff.datasets.ingest import IngestOptions
from stdiff.pipelines.engine.config import from_dict, load_config
from stdiff.pipelines.engine.runner import TrainJobConfig
from stdiff.pipelines.jobs.distill import DistillConfig, run_distillation
from stdiff.pipelines.jobs.forecast import ForecastConfig, run_forecast
from stdiff.pipelines.jobs.generate import GenerateConfig, run_generation
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation
from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, run_reconstruction
from stdiff.pipelines.jobs.score import ScoreConfig, run_scoring

# OS errors that the same call will raise again: retrying them only delays the message
DETERMINISTIC_OS_ERRORS = (
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)
DETERMINISTIC_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG})


def transient(exc: BaseException) -> bool:
    """Whether the same call may succeed later: timeouts, dropped connections and other OS
    errors; never a bad input (``ValueError``, which ``DataError`` is), a missing or forbidden
    path, a full or read-only disk."""
    if isinstance(exc, ValueError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, DETERMINISTIC_OS_ERRORS):
        return False
    return isinstance(exc, OSError) and exc.errno not in DETERMINISTIC_ERRNOS


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry the failed task run only for :func:`transient`
    errors (the failed state's data is the exception)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:  # the failed run's exception, re-raised by its state
            exc = e
    return exc is not None and transient(exc)


def _publish(key: str, title: str, rows: dict[str, Any]) -> None:
    """A markdown table artifact (key: lowercase letters, digits and dashes)."""
    lines = [f"## {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v if not isinstance(v, float) else f'{v:.4g}'} |" for k, v in rows.items()]
    create_markdown_artifact("\n".join(lines), key=key, description=title)


def ingest_options(options: IngestOptions | dict[str, Any]) -> IngestOptions:
    """``IngestOptions`` from an object or a mapping of its fields (validated by ``from_dict``)."""
    if isinstance(options, IngestOptions):
        return options
    if not isinstance(options, dict):
        raise ValueError(f"ingest: options: expected a mapping, got {type(options).__name__}")
    return from_dict(IngestOptions, options, "ingest:")


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def ingest_task(
    source: str | list[str],
    out: str,
    options: IngestOptions | dict[str, Any],
    overwrite: bool = False,
) -> dict[str, Any]:
    """Ingest ``source`` into the store ``out`` (retried only on transient I/O errors);
    ``overwrite`` replaces an earlier ingest of other data (a scheduled refresh)."""
    from stdiff.datasets.ingest import ingest

    r = ingest(source, out, ingest_options(options), overwrite=overwrite)
    return {"out": str(r.store), "written": r.written, "seconds": r.seconds, "summary": r.summary}


@flow(name="stdiff-ingest", validate_parameters=False)
def ingest_flow(
    source: str | list[str], out: str, options: IngestOptions, overwrite: bool = False
) -> dict[str, Any]:
    """Ingest ``source`` (a file, folder or URL; or several per-station tables) into the zarr
    store ``out`` (``options``: ``IngestOptions`` fields; ``overwrite``: replace an earlier
    ingest of other data, as a scheduled refresh must)."""
    opt = ingest_options(options)  # a bad option fails before the task
    r = ingest_task(source, out, opt, overwrite)
    name = Path(source).name if isinstance(source, str) else f"{len(source)} tables"
    _publish("ingest", f"ingest {name}", r)
    return r


def _records(path: Path) -> list[dict[str, Any]]:
    """The complete JSON records of ``metrics.jsonl`` (a line being written is left for later)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def progress_line(rec: dict[str, Any], total: int) -> str:
    """``train: step 150/300 (50 %), loss 0.2134, 41.2 samples/s`` from a metrics record."""
    parts = [f"train: step {rec['step']}/{total} ({100 * rec['step'] / max(total, 1):.0f} %)"]
    for key, fmt in (("loss", "loss {:.4f}"), ("val_loss", "validation loss {:.4f}"),
                     ("samples_per_s", "{:.1f} samples/s")):  # fmt: skip
        if isinstance(rec.get(key), int | float):
            parts.append(fmt.format(rec[key]))
    return ", ".join(parts)


@contextmanager
def logged_progress(
    metrics: Path, total: int, every: float = 2.0, fresh: bool = False
) -> Iterator[None]:
    """Log every record the training loop appends to ``metrics`` (each ``loop.log_every``
    steps) to the task run's log while the block runs: a thread reads the file every ``every``
    seconds, so a long training is not silent in the flow's log and console. Records already
    there (a resumed run's) are not logged again, unless ``fresh`` (the run replaces them)."""
    logger = get_run_logger()
    last = 0 if fresh else max((r["step"] for r in _records(metrics)), default=0)
    stop = threading.Event()

    def report() -> None:
        nonlocal last
        for rec in _records(metrics):
            if rec["step"] > last:
                logger.info(progress_line(rec, total))
                last = rec["step"]

    def follow() -> None:
        while not stop.wait(every):
            report()

    thread = threading.Thread(target=follow, name="stdiff-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report()


def torchrun_command(
    config: str, overrides: dict[str, Any], resume: str | None, nproc: int, overwrite: bool = False
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
    return [*cmd, "--overwrite"] if overwrite else cmd


@task(name="train", tags=["gpu"])
def train_task(
    config: str,
    overrides: dict[str, Any],
    resume: str | None,
    nproc: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train from ``config`` (in this process, or ``nproc`` DDP processes through torchrun),
    logging the progress; ``overwrite`` starts afresh in a folder holding an earlier run (put
    back if the new one fails). Returns the run folder, the step and the last metrics."""
    from stdiff.pipelines.engine.runner import run_training

    cfg = load_config(config, TrainJobConfig, overrides)
    metrics = Path(cfg.out) / "metrics.jsonl"
    get_run_logger().info(
        f"train: {cfg.loop.steps} steps into {cfg.out}, progress every {cfg.loop.log_every} steps"
    )
    with logged_progress(metrics, cfg.loop.steps, fresh=overwrite and resume is None):
        if nproc > 1:
            import subprocess

            res = subprocess.run(torchrun_command(config, overrides, resume, nproc, overwrite),
                                 capture_output=True, text=True)  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(
                    f"torchrun train failed ({res.returncode}): {res.stderr[-2000:]}"
                )
            step = None
        else:
            step = run_training(cfg, resume, overwrite=overwrite).step
    last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.exists() else {}
    return {"run": cfg.out, "processes": nproc, **last,
            "step": step if step is not None else last.get("step")}  # fmt: skip


@flow(name="stdiff-train")
def train_flow(
    config: str,
    overrides: dict[str, Any] | None = None,
    resume: str | None = None,
    nproc: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train from a YAML config (``overrides``: dotted keys) and publish the last metrics;
    ``nproc > 1`` launches data-parallel training through ``torchrun`` on this machine;
    ``overwrite``: retrain afresh into a folder holding an earlier run (scheduled retraining)."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    load_config(config, TrainJobConfig, overrides or {})  # fail fast on a bad config
    r = train_task(config, overrides or {}, resume, nproc, overwrite)
    _publish("train", f"train {Path(config).stem}", r)
    return r


@dataclass(frozen=True)
class Job:
    """A job kind: its typed config, its run function (config first), the name its task runs
    show, whether it holds a GPU (``gpu`` tag, for a concurrency limit) and whether the run
    function takes ``progress``: a bar that ``pipelines.engine.progress`` draws only when stderr is a
    terminal (``stdiff quickstart``, a flow run from a shell), never in served runs or logs."""

    config: type
    run: Callable[..., dict[str, Any]]
    task_name: str
    gpu: bool = True
    takes_progress: bool = False


JOBS: dict[str, Job] = {
    "impute": Job(ImputeConfig, run_imputation, "impute-missing-values", takes_progress=True),
    "forecast": Job(ForecastConfig, run_forecast, "forecast-ensemble", takes_progress=True),
    "score": Job(ScoreConfig, run_scoring, "score-forecasts", gpu=False),
    "reconstruct": Job(
        ReconstructConfig, run_reconstruction, "reconstruct-images", takes_progress=True
    ),
    "generate": Job(GenerateConfig, run_generation, "generate-samples"),
    "distill": Job(DistillConfig, run_distillation, "distill-students"),
}


def job_config(kind: str, params: Any) -> Any:
    """The job's typed config from ``params``: a config object as it is, or a mapping of its
    fields validated by ``from_dict`` (the CLI's validator); ``params["config"]`` may name a
    YAML file (``configs/*.yaml``) whose keys the other fields override. A bad value raises
    ``ValueError`` naming the field (and the file)."""
    cls = JOBS[kind].config
    if isinstance(params, cls):
        return params
    if not isinstance(params, dict):
        raise ValueError(
            f"{kind}: params: expected {cls.__name__} fields (a mapping), got {type(params).__name__}"
        )
    if "config" in params:
        rest = {k: v for k, v in params.items() if k != "config"}
        return load_config(params["config"], cls, rest)
    return from_dict(cls, params, f"{kind}:")


@task(name="job")
def job_task(kind: str, cfg: Any) -> dict[str, Any]:
    """Run the ``kind`` job on its validated config (use :func:`run_job`, which names the task
    run after the job); logs what it runs, as the job may take long."""
    job = JOBS[kind]
    get_run_logger().info(f"{job.task_name}: {kind} job into {getattr(cfg, 'out', '-')}")
    return job.run(cfg, progress=True) if job.takes_progress else job.run(cfg)


JOB_TASKS = {
    kind: job_task.with_options(name=job.task_name, tags=["gpu"] if job.gpu else None)
    for kind, job in JOBS.items()
}


def run_job(kind: str, params: Any) -> dict[str, Any]:
    """Validate ``params`` (before any task runs), then run the job as its named task."""
    cfg = job_config(kind, params)
    return JOB_TASKS[kind](kind, cfg)


@flow(name="stdiff-impute", validate_parameters=False)
def impute_flow(params: ImputeConfig) -> dict[str, Any]:
    """``stdiff impute``: ``params`` are ``ImputeConfig`` fields (checkpoint, data, out, ...)."""
    r = run_job("impute", params)
    rows = {k: v for k, v in r.items() if k != "metrics"}
    rows.update({k: v for k, v in r.get("metrics", {}).items() if k != "rank_histogram"})
    _publish("impute", "imputation", rows)
    return r


@flow(name="stdiff-forecast", validate_parameters=False)
def forecast_flow(params: ForecastConfig) -> dict[str, Any]:
    """``stdiff forecast``: ``params`` are ``ForecastConfig`` fields."""
    r = run_job("forecast", params)
    _publish("forecast", "ensemble forecast", r)
    return r


@flow(name="stdiff-score", validate_parameters=False)
def score_flow(params: ScoreConfig) -> dict[str, Any]:
    """``stdiff score``: ``params`` are ``ScoreConfig`` fields; plots are linked in the artifact."""
    cfg = job_config("score", params)
    r = run_job("score", cfg)
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


@flow(name="stdiff-reconstruct", validate_parameters=False)
def reconstruct_flow(params: ReconstructConfig) -> dict[str, Any]:
    """``stdiff reconstruct``: ``params`` are ``ReconstructConfig`` fields; links the PNG grid."""
    r = run_job("reconstruct", params)
    rows = {k: v for k, v in r.items() if k != "metrics"}
    _publish("reconstruct", "reconstruction", {**rows, **r["metrics"], **_grid_link(r["out"])})
    return r


@flow(name="stdiff-generate", validate_parameters=False)
def generate_flow(params: GenerateConfig) -> dict[str, Any]:
    """``stdiff generate``: ``params`` are ``GenerateConfig`` fields; links the PNG grid."""
    r = run_job("generate", params)
    rows = {"out": r["out"], **r["metrics"], **_grid_link(r["out"])}
    _publish("generate", "class-conditional samples", rows)
    return r


@flow(name="stdiff-distill", validate_parameters=False)
def distill_flow(params: DistillConfig) -> dict[str, Any]:
    """``stdiff distill``: ``params`` are ``DistillConfig`` fields (or ``config``: a YAML file)."""
    r = run_job("distill", params)
    rows = {s["run"]: f"{s['sampler']} x {s['steps']} ({s['spacing']})" for s in r["students"]}
    _publish("distill", f"{r['method']} distillation", {**rows, "seconds": r["seconds"]})
    return r


def _grid_link(out: str) -> dict[str, str]:
    """The artifact row linking the PNG grid written beside the output store."""
    png = Path(f"{out}.png").resolve()
    return {"grid": f"[{png.name}](file://{png})"}
