"""``stdiff serve``: register the flows as Prefect deployments with cron schedules and serve them.

A serve config (``configs/serve.yaml``) lists deployments::

    deployments:
      - name: forecast-00-12-utc
        flow: forecast                 # a key of FLOWS
        cron: "0 0,12 * * *"           # optional; several crons: a list
        timezone: UTC
        parameters: {params: {checkpoint: ..., data: ..., out: ..., init: [latest], lead: 72h}}

Every deployment's flow and parameters are checked before anything is registered (the job
flows' ``params`` against their typed configs, so a bad value fails naming the field). Then
``prefect.serve`` registers them with the API (``PREFECT_API_URL``: a ``prefect server start``
server, or Prefect Cloud) and runs their scheduled and triggered runs in this process until it is
stopped. Outputs of scheduled runs with the same ``out`` replace the previous ones atomically.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from stdiff.flows.demo import toy_demo_flow
from stdiff.flows.jobs import (
    JOBS,
    _config,
    forecast_flow,
    generate_flow,
    impute_flow,
    ingest_flow,
    reconstruct_flow,
    score_flow,
    train_flow,
)
from stdiff.flows.quickstart import quickstart_flow

FLOWS = {
    "ingest": ingest_flow,
    "train": train_flow,
    "impute": impute_flow,
    "forecast": forecast_flow,
    "score": score_flow,
    "reconstruct": reconstruct_flow,
    "generate": generate_flow,
    "quickstart": quickstart_flow,
    "toy": toy_demo_flow,
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


def check_deployment(d: DeploymentSpec, where: str) -> None:
    """Refuse an unknown flow, a bad cron or parameters the flow or its job config rejects."""
    from prefect.client.schemas.schedules import CronSchedule

    if d.flow not in FLOWS:
        raise ValueError(f"{where}: flow {d.flow!r} is not known; choose one of {sorted(FLOWS)}")
    for cron in [d.cron] if isinstance(d.cron, str) else d.cron or []:
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
    if d.flow in JOBS:
        if "params" not in d.parameters:
            raise ValueError(f"{where}: parameters.params (the job's config) is missing")
        try:
            _config(d.flow, d.parameters["params"])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def deployments(cfg: ServeConfig) -> list[Any]:
    """The ``RunnerDeployment`` objects (nothing is registered yet)."""
    out = []
    for d in cfg.deployments:
        crons = [d.cron] if isinstance(d.cron, str) else list(d.cron or [])
        schedules = None
        if crons:
            from prefect.client.schemas.schedules import CronSchedule

            schedules = [CronSchedule(cron=c, timezone=d.timezone) for c in crons]
        out.append(
            FLOWS[d.flow].to_deployment(
                name=d.name,
                schedules=schedules,
                parameters=d.parameters,
                tags=["stdiff", d.flow, *d.tags],
                description=d.description or FLOWS[d.flow].description,
            )
        )
    return out


def serve(cfg: ServeConfig) -> None:
    """Register the deployments and serve their runs until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(cfg), limit=cfg.limit)
