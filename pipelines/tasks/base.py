"""The task protocol: what a training task tells the engine, and what it keeps for inference.

A task is the one place that knows how a stored sample becomes ``(x0, condition, loss mask)``.
The training runner (``pipelines.engine.runner``) asks the task named by ``data.task`` (through
the registry in ``pipelines.tasks``) for five things and holds no task-specific branch itself:

* ``validate(data)``: config checks that need no store (one line naming the key);
* ``check_store(ds, data)``: the store is of the kind this task reads (one line naming the ingest);
* ``net_params(data, model)``: ``model.params`` completed from the store (channel counts, the
  number of features), refusing a given value that contradicts it;
* ``datasets(data)``: training and validation windows, ``to_batch`` and the metadata that the
  checkpoint keeps for inference (:class:`TaskData`);
* ``sample_dump(data, model, seed, items)``: the periodic dump of ``loop.sample_every`` (or None).

``channel_dim`` is the dim of ``x0`` whose channels (features, variables) get their own range
for clipping predictions at inference (``engine.runner.x0_range``; None: one range).
``jobs`` names the inference jobs that read this task's checkpoints (``stdiff impute``, ...);
a job given a checkpoint of another task refuses it in one line (:func:`require_job`). The
inference condition and the output layout of each task live beside its training rule in the
same module, so that training and inference build conditions the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from stdiff.datasets.masks import STRATEGIES, Strategy
from stdiff.diffusion.conditioning import Condition

if TYPE_CHECKING:
    from stdiff.diffusion.precond import Denoiser
    from stdiff.pipelines.engine.models import ModelConfig

ToBatch = Callable[[dict, torch.Generator], tuple[torch.Tensor, Condition, torch.Tensor | None]]
SampleFn = Callable[["Denoiser", int, Path], dict[str, float]]


@dataclass(frozen=True)
class DataConfig:
    """store: a zarr store from ``stdiff ingest``; task: how samples become training batches
    (a name in ``pipelines.tasks.TASKS``: ``images``, ``imputation``, ``forecast``);
    fold: CSDI fold (imputation); max_samples: use only the first N training samples;
    mask, horizon, max_block: the imputation targets (``datasets.masks``; ``horizon`` steps for
    ``forecast``, the longest gap as a fraction of the window for ``block``);
    variables, train_period, valid_period, context, leads, residual: the weather ``forecast`` task
    (``pipelines.tasks.forecast``; periods are inclusive ``[start, end]`` dates, leads in steps);
    latent: an autoencoder run: train in its latent space (``pipelines.engine.latent``);
    window, stride: a store holding one long ``(time, feature)`` series (per-station tables) is
    cut into windows of ``window`` steps, ``stride`` apart, inside the store's training split
    (``split == 0``; validation ``split == 1``, windows ``window`` apart)."""

    store: str
    task: str  # a name in pipelines.tasks.TASKS
    latent: str | None = None
    fold: int = 0
    max_samples: int | None = None
    mask: Strategy = "random"
    horizon: int = 0
    max_block: float = 0.5
    variables: list[str] | None = None
    train_period: list[str] | None = None
    valid_period: list[str] | None = None
    context: int = 2
    leads: list[int] = field(default_factory=lambda: [1])
    residual: bool = True
    window: int = 36
    stride: int = 1

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1:
            raise ValueError(
                f"window must be >= 2 and stride >= 1, got {self.window} and {self.stride}"
            )
        if self.mask == "forecast" and self.horizon >= self.window:
            raise ValueError(f"horizon {self.horizon} must be shorter than window {self.window}")
        if self.mask not in STRATEGIES:
            raise ValueError(f"mask {self.mask!r} is not known; choose one of {list(STRATEGIES)}")
        if self.mask == "forecast" and self.horizon < 1:
            raise ValueError("horizon must be at least 1 with mask: forecast")


@dataclass(frozen=True)
class TaskData:
    """train / valid: torch datasets of store items (``valid`` None when there is none);
    to_batch: a collated batch and the step's generator -> ``(x0, condition, loss mask)``;
    metadata: what inference needs to know about the training data (kept in the checkpoint)."""

    train: Any
    valid: Any | None
    to_batch: ToBatch
    metadata: dict[str, Any]


@runtime_checkable
class Task(Protocol):
    """One training task (see the module docstring)."""

    name: str
    jobs: tuple[str, ...]
    channel_dim: int | None

    def validate(self, data: DataConfig) -> None: ...

    def check_store(self, ds: Any, data: DataConfig) -> None: ...

    def net_params(self, data: DataConfig, model: ModelConfig) -> dict[str, Any]: ...

    def datasets(self, data: DataConfig) -> TaskData: ...

    def sample_dump(
        self, data: DataConfig, model: ModelConfig, seed: int, items: list[dict]
    ) -> SampleFn | None: ...


def store_metadata(ds, variables: list[str]) -> dict[str, Any]:
    """What inference needs to know about the training data, kept in the checkpoint: the
    variables, their dims, sizes and non-sample coordinates (feature names, grid), and the
    normalisation statistics (``<var>_mean`` / ``_std`` / ``_diff_std`` arrays) as lists."""
    stats = {
        name: np.asarray(ds[name].values, dtype=np.float64).tolist()
        for name in ds.data_vars
        if name.rsplit("_", 1)[-1] in ("mean", "std") or name.endswith("_diff_std")
    }
    coords = {
        str(c): [str(v) for v in np.asarray(ds[c].values).tolist()]
        for c in ds.coords
        if c not in ("stay", "sample", "time") and ds[c].ndim == 1 and ds[c].size <= 4096
    }
    return {
        "variables": {v: list(ds[v].dims) for v in variables},
        "coords": coords,
        "sizes": {
            str(d): int(n) for d, n in ds.sizes.items() if d not in ("stay", "sample", "time")
        },
        "stats": stats,
        "normalization": ds.attrs.get("normalization", ""),
        "store_hash": ds.attrs.get("content_hash", ""),
    }


def limit(indices: np.ndarray, max_samples: int | None) -> np.ndarray:
    """The first ``max_samples`` training indices (all of them when None or 0)."""
    return indices[:max_samples] if max_samples else indices
