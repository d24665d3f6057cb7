"""``stdiff serve``: register the flows as Prefect deployments with cron schedules and serve them.

A serve config (``configs/serve.yaml``) lists deployments::

    deployments:
      - name: forecast-00-12-utc
        flow: forecast                 # a key of FLOWS
        cron: "0 0,12 * * *"           # optional; several crons: a list
        timezone: UTC
        parameters: {params: {checkpoint: ..., data: ..., out: ..., init: [latest], lead: 72h}}

Every deployment is checked before anything is registered: the flow, the cron strings, the
parameters (the job flows' ``params`` against their typed configs, so a bad value fails naming
the field) and the inputs the runs will read (:data:`INPUTS`: checkpoints, stores, config files
must exist and be the right kind of thing; relative paths are read from this folder, where the
served runs run too). Then the deployments are registered with the API (``PREFECT_API_URL``: a
``prefect server start`` server, or Prefect Cloud) with their parameter schemas, and their
scheduled and triggered runs run in this process until it is stopped (Ctrl-C or SIGTERM: the
runner stops polling, pauses the schedules and exits cleanly). Outputs of scheduled runs with the
same ``out`` replace the previous ones atomically.

Parameter schemas are shown, not enforced by the server: the flows validate their parameters
with the CLI's validator, so a run from the UI with a bad value fails with the CLI's message.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stdiff.flows.demo import toy_demo_flow
from stdiff.flows.jobs import (
    JOBS,
    distill_flow,
    forecast_flow,
    generate_flow,
    impute_flow,
    ingest_flow,
    job_config,
    reconstruct_flow,
    score_flow,
    train_flow,
)
from stdiff.flows.quickstart import quickstart_flow
from stdiff.pipelines.engine.resources import resolve_config

FLOWS = {
    "ingest": ingest_flow,
    "train": train_flow,
    "impute": impute_flow,
    "forecast": forecast_flow,
    "score": score_flow,
    "reconstruct": reconstruct_flow,
    "generate": generate_flow,
    "distill": distill_flow,
    "quickstart": quickstart_flow,
    "toy": toy_demo_flow,
}

InputKind = Literal["checkpoint", "store", "folder", "config", "path"]

# What each flow's runs read: (parameter, kind). ``params.x`` is a field of a job's config
# (read from the validated config, so a value from its YAML counts); a mapping's values are each
# an input. checkpoint: a run folder or a step_* folder with weights; store: a zarr store
# folder; config: a YAML file (``configs/NAME.yaml`` falls back to the shipped config, as
# ``load_config`` does); path: a file or a folder (URLs are not checked).
INPUTS: dict[str, tuple[tuple[str, InputKind], ...]] = {
    "ingest": (("source", "path"),),
    "train": (("config", "config"), ("config:data.store", "store"), ("resume", "checkpoint")),
    "impute": (("params.checkpoint", "checkpoint"), ("params.data", "store")),
    "forecast": (("params.checkpoint", "checkpoint"), ("params.data", "store")),
    "score": (("params.forecasts", "store"), ("params.data", "store")),
    "reconstruct": (("params.checkpoint", "checkpoint"), ("params.data", "store")),
    "generate": (
        ("params.checkpoint", "checkpoint"),
        ("params.classifier", "folder"),
        ("params.reference", "store"),
    ),
    "distill": (("params.teacher", "checkpoint"), ("params.store", "store")),
    "quickstart": (("source", "path"),),
    "toy": (("config_path", "config"),),
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its name, the flow (a key of ``FLOWS``), cron schedule(s), parameters."""

    name: str
    flow: str
    cron: str | list[str] | None = None
    timezone: str = "UTC"
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    """``deployments``; ``limit``: the most flow runs this process runs at once."""

    deployments: list[DeploymentSpec]
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.deployments:
            raise ValueError("serve: deployments: give at least one")
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"serve: deployments: names must be unique, got {names}")
        for i, d in enumerate(self.deployments):
            check_deployment(d, f"serve: deployments[{i}] ({d.name})")


def _crons(d: DeploymentSpec) -> list[str]:
    return [d.cron] if isinstance(d.cron, str) else list(d.cron or [])


def check_deployment(d: DeploymentSpec, where: str, inputs: bool = False) -> None:
    """Refuse an unknown flow, a bad cron, parameters the flow or its job config rejects, and
    (``inputs``) an input that is missing or of the wrong kind (``ValueError`` naming the
    deployment, the parameter and the path). Loading a serve config checks all but the inputs,
    which may not exist yet where the config is written; ``check_inputs`` checks them before
    serving."""
    from prefect.client.schemas.schedules import CronSchedule

    if d.flow not in FLOWS:
        raise ValueError(f"{where}: flow {d.flow!r} is not known; choose one of {sorted(FLOWS)}")
    for cron in _crons(d):
        try:
            CronSchedule(cron=cron, timezone=d.timezone)
        except ValueError:
            raise ValueError(
                f"{where}: cron {cron!r} is not a valid cron string (minute hour day month weekday)"
            ) from None
    sig = inspect.signature(FLOWS[d.flow].fn)
    unknown = sorted(set(d.parameters) - set(sig.parameters))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown} of flow {d.flow!r}")
    missing = [
        n for n, p in sig.parameters.items() if p.default is p.empty and n not in d.parameters
    ]
    if missing:
        raise ValueError(f"{where}: parameter(s) {missing} of flow {d.flow!r} are missing")
    try:
        configs = _configs(d)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for key, path, kind in _inputs(d, configs) if inputs else []:
        problem = input_problem(path, kind)
        if problem:
            raise ValueError(f"{where}: {key} {path!r}: {problem}")


def check_inputs(cfg: ServeConfig, where: str = "serve") -> None:
    """Every deployment's inputs exist and are of the right kind (``stdiff serve`` and
    ``--check`` call this before listing or serving)."""
    for i, d in enumerate(cfg.deployments):
        check_deployment(d, f"{where}: deployments[{i}] ({d.name})", inputs=True)


def _configs(d: DeploymentSpec) -> dict[str, Any]:
    """The typed configs a deployment's parameters name: ``params`` of a job flow, the
    training config of a train flow (both validated here, as the runs will)."""
    if d.flow in JOBS:
        return {"params": job_config(d.flow, d.parameters["params"])}
    if d.flow == "train" and resolve_config(str(d.parameters["config"])).is_file():
        from stdiff.pipelines.engine.config import load_config
        from stdiff.pipelines.engine.runner import TrainJobConfig

        overrides = d.parameters.get("overrides") or {}
        return {"config:": load_config(d.parameters["config"], TrainJobConfig, overrides)}
    return {}


def _inputs(d: DeploymentSpec, configs: dict[str, Any]) -> list[tuple[str, str, InputKind]]:
    """``(parameter, path, kind)`` of every input a deployment's runs read."""
    out: list[tuple[str, str, InputKind]] = []
    for key, kind in INPUTS[d.flow]:
        if key.startswith("params."):
            value = getattr(configs["params"], key.removeprefix("params."))
        elif key.startswith("config:"):
            if "config:" not in configs:
                continue  # the config file itself is reported missing
            value = configs["config:"]
            for part in key.removeprefix("config:").split("."):
                value = getattr(value, part)
            key = f"{d.parameters['config']}: {key.removeprefix('config:')}"
        else:
            value = d.parameters.get(
                key, inspect.signature(FLOWS[d.flow].fn).parameters[key].default
            )
        if isinstance(value, list | tuple):  # several inputs (per-station tables)
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, dict):
            out += [(f"{key}.{name}", str(v), kind) for name, v in value.items()]
        elif value is not None:
            out.append((key, str(value), kind))
    return out


def input_problem(path: str, kind: InputKind) -> str | None:
    """What is wrong with ``path`` as an input of ``kind``, or None when it can be read."""
    if "://" in path:
        return None  # a URL (gs://, s3://, https://): read by the run, not checked here
    p = resolve_config(path) if kind == "config" else Path(path)
    if not p.exists():
        return "not found"
    if kind == "config":
        return None if p.is_file() else "is not a file"
    if kind in ("folder", "store", "checkpoint") and not p.is_dir():
        return f"is not a folder (expected a {kind})"
    if kind == "store" and not any((p / m).is_file() for m in ("zarr.json", ".zgroup", ".zattrs")):
        return "is not a zarr store (no zarr.json)"
    if kind == "checkpoint":
        from stdiff.pipelines.engine.runner import checkpoint_folder

        try:
            checkpoint_folder(p)
        except ValueError as e:
            return str(e).removeprefix(f"{p}: ")
    return None


def deployments(cfg: ServeConfig) -> list[Any]:
    """The ``RunnerDeployment`` objects (nothing is registered yet). Parameter schemas come
    from the flows' typed signatures; the server does not enforce them (the flows validate)."""
    from prefect.client.schemas.schedules import CronSchedule

    out = []
    for d in cfg.deployments:
        schedules = [CronSchedule(cron=c, timezone=d.timezone) for c in _crons(d)] or None
        out.append(
            FLOWS[d.flow].to_deployment(
                name=d.name,
                schedules=schedules,
                parameters=d.parameters,
                tags=["stdiff", d.flow, *d.tags],
                description=d.description or FLOWS[d.flow].description,
                enforce_parameter_schema=False,
            )
        )
    return out


async def aserve(deps: list[Any], limit: int | None = None) -> None:
    """Register ``deps`` (from :func:`deployments`) and serve their runs until SIGTERM, SIGINT
    or cancellation.

    Prefect's runner answers SIGTERM with its sync ``stop()``, which inside the event loop only
    creates the ``Runner.astop`` coroutine and never awaits it (a RuntimeWarning, and no clean
    shutdown). Here SIGTERM cancels the serving task instead, as Ctrl-C does."""
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True, limit=limit)
    for dep in deps:
        await runner.aadd_deployment(dep)
    serving = asyncio.ensure_future(runner.start())
    loop = asyncio.get_running_loop()
    # start() installs runner.handle_sigterm as the SIGTERM handler; the self-pipe wakes the loop
    runner.handle_sigterm = lambda *_: loop.call_soon_threadsafe(serving.cancel)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deps)
    print(f"serving {len(deps)} deployment(s): {names}", flush=True)
    try:
        await serving
    except asyncio.CancelledError:
        if not serving.cancelled():
            raise  # this coroutine itself was cancelled
    print("stopped serving", flush=True)


def serve(cfg: ServeConfig) -> None:
    """Register the deployments and serve their runs until interrupted (Ctrl-C or SIGTERM)."""
    check_inputs(cfg)
    deps = deployments(cfg)  # outside the event loop: to_deployment is sync here
    previous = signal.getsignal(signal.SIGTERM)
    try:
        asyncio.run(aserve(deps, cfg.limit))
    except KeyboardInterrupt:
        print("stopped serving", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
