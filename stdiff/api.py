"""The Python API: a few lines per job in a notebook, on in-memory xarray objects or store paths.

::

    import stdiff
    model = stdiff.load("runs/csdi")                 # a run folder or a step_* checkpoint
    imputed = model.impute(ds, members=50, sampler="dpmpp_2m_sde", steps=10, split="all")
    fc = model.forecast("ncep.zarr", init=["2014-06-01T00"], lead="72h", members=8)
    model = stdiff.train("configs/train_ncep_dit.yaml", overrides={"loop.steps": 100})

Like PyPOTS's ``fit``/``impute`` and diffusers' pipelines, a loaded model is called with the data
and returns the result; unlike them, every call is the same job that the CLI and the Prefect
flows run (``run_imputation``, ``run_forecast``, ``run_reconstruction``, ``run_generation``,
``run_training``): the keyword arguments are that job's config keys (``stdiff impute --help``),
validated with the same messages. ``data`` is a store path or an ``xr.Dataset`` in a store's
canonical form (what ``stdiff ingest`` writes; ``xr.open_zarr`` of one, sliced or not). Without
``out`` the result is computed in a temporary folder and returned in memory; with ``out`` it is
published there as by the CLI and returned opened lazily. Each returned dataset carries the
job's summary (timings, evaluations, scores) in ``attrs["stdiff_job"]``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from stdiff.pipelines.engine.checkpoint import load_checkpoint
from stdiff.pipelines.engine.config import from_dict, load_config
from stdiff.pipelines.engine.runner import TrainJobConfig, checkpoint_folder, run_training
from stdiff.pipelines.tasks import TASKS, get_task

Data = str | Path | xr.Dataset


@dataclass(frozen=True)
class Model:
    """A trained model: ``path`` (run folder or checkpoint), its training ``config`` and ``task``
    (``imputation``, ``forecast`` or ``images``). Methods run one job each and return xarray."""

    path: Path
    config: TrainJobConfig

    @property
    def task(self) -> str:
        return self.config.data.task

    def impute(self, data: Data, *, out: str | Path | None = None, progress: bool = True,
               **options: Any) -> xr.Dataset:  # fmt: skip
        """Samples of the missing entries: ``samples (stay, member, time, feature)``, median,
        quantiles and masks. Options: ImputeConfig keys (``members``, ``sampler``, ``steps``,
        ``split`` (default ``test``: CSDI's split; ``all`` for every stay), ``eval_ratio``, ...)."""
        from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

        self._expect("impute")
        return _run(ImputeConfig, run_imputation, self, data, out, options, progress)

    def calibrate(self, data: Data, *, target: str = "coverage", level: float = 0.9,
                  progress: bool = True, **options: Any) -> dict[str, Any]:  # fmt: skip
        """The spread factor fitted on an imputation of held-out ``data`` (``stdiff calibrate``;
        options as :meth:`impute`, e.g. ``split="valid", eval_ratio=0.1``): impute new data with
        ``spread=result["spread"]``."""
        from stdiff.pipelines.jobs.calibrate import calibrate_spread

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "held_out.zarr"
            self.impute(data, out=out, progress=progress, **options)
            return calibrate_spread(out, target, level)  # type: ignore[arg-type]

    def forecast(self, data: Data, *, init: str | list[str], out: str | Path | None = None,
                 progress: bool = True, **options: Any) -> xr.Dataset:  # fmt: skip
        """An ensemble rolled out from ``init`` (ISO times, ``START/END/EVERY`` or ``latest``).
        Options: ForecastConfig keys (``lead``, ``members``, ``sampler``, ``steps``, ...)."""
        from stdiff.pipelines.jobs.forecast import ForecastConfig, run_forecast

        self._expect("forecast")
        options["init"] = [init] if isinstance(init, str) else list(init)
        return _run(ForecastConfig, run_forecast, self, data, out, options, progress)

    def reconstruct(self, data: Data, *, task: str, out: str | Path | None = None,
                    progress: bool = True, **options: Any) -> xr.Dataset:  # fmt: skip
        """Inverse problems on an images store: ``task`` is inpaint, outpaint, superres, deblur,
        mri or ct. Options: ReconstructConfig keys (``method``, ``sampler``, ``members``, ...)."""
        from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, run_reconstruction

        self._expect("reconstruct")
        options["task"] = task
        return _run(ReconstructConfig, run_reconstruction, self, data, out, options, progress)

    def generate(self, *, out: str | Path | None = None, **options: Any) -> xr.Dataset:
        """Class-conditional samples with classifier-free guidance. Options: GenerateConfig keys
        (``n``, ``labels``, ``guidance``, ``sampler``, ``steps``, ...)."""
        from stdiff.pipelines.jobs.generate import GenerateConfig, run_generation

        self._expect("generate")
        return _run(GenerateConfig, lambda cfg, progress: run_generation(cfg), self, None, out,
                    options, False)  # fmt: skip

    def _expect(self, job: str) -> None:
        if job not in get_task(self.task).jobs:
            tasks = [name for name in TASKS if job in get_task(name).jobs]
            raise ValueError(
                f"{self.path}: a model of the {self.task!r} task cannot {job}; "
                f"that needs a model trained with data.task: {' or '.join(tasks)}"
            )


def load(path: str | Path) -> Model:
    """The model in a training run folder (its latest checkpoint) or a ``step_*`` folder."""
    path = Path(path)
    ckpt = checkpoint_folder(path)
    _, config, _ = load_checkpoint(ckpt / "weights.safetensors")
    return Model(path, from_dict(TrainJobConfig, config, f"{ckpt}: config"))


def train(config: str | Path | dict[str, Any] | TrainJobConfig, *,
          overrides: dict[str, Any] | None = None, resume: str | Path | None = None) -> Model:  # fmt: skip
    """Train as ``stdiff train`` does (a YAML path, a mapping or a ``TrainJobConfig``; dotted
    ``overrides`` such as ``{"loop.steps": 100}``) and return the trained model."""
    if isinstance(config, TrainJobConfig):
        if overrides:
            raise ValueError("overrides: give them with a YAML path or a mapping, not a config")
        cfg = config
    elif isinstance(config, dict):
        cfg = from_dict(TrainJobConfig, _nested(config, overrides or {}), "train:")
    else:
        cfg = load_config(config, TrainJobConfig, overrides)
    run_training(cfg, resume)
    return load(cfg.out)


def _nested(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _run(cls: type, job: Callable[..., dict[str, Any]], model: Model, data: Data | None,
         out: str | Path | None, options: dict[str, Any], progress: bool) -> xr.Dataset:  # fmt: skip
    """Validate the job config, stage in-memory data as a store, run the job, return its output."""
    where = f"{cls.__name__}:"
    with tempfile.TemporaryDirectory(prefix="stdiff-api-") as tmp:
        keys = {"checkpoint": str(model.path), **options}
        keys["out"] = str(out) if out is not None else str(Path(tmp) / "out.zarr")
        if data is not None:
            keys["data"] = _stage(data, Path(tmp) / "input.zarr")
        cfg = from_dict(cls, keys, where)
        summary = job(cfg, progress=progress)
        ds = xr.open_zarr(cfg.out, consolidated=False)
        if out is None:
            ds = ds.load()
        ds.attrs["stdiff_job"] = summary
        return ds


def _stage(data: Data, path: Path) -> str:
    """A store path for ``data``: the path itself, or an in-memory dataset written to ``path``."""
    if not isinstance(data, xr.Dataset):
        return str(data)
    if "stdiff_version" not in data.attrs:
        raise ValueError(
            "data: an xr.Dataset in stdiff's canonical form is expected (a store written by "
            "`stdiff ingest`, opened with xr.open_zarr); ingest the raw data first"
        )
    staged = data.copy()
    for var in staged.variables.values():
        var.encoding = {}  # the source store's chunking may not fit a slice of it
    staged.to_zarr(path, consolidated=False, zarr_format=3)
    return str(path)
