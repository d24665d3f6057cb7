"""``stdiff calibrate``: the spread factor for an imputation model, fitted on an imputation of
held-out data (``pipelines.metrics.calibration``).

Impute data the model was not trained on and that is not the data to be scored (PhysioNet's
validation stays, ``--set split=valid``; another test period of a series) with hidden values
(``eval_ratio``), then::

    stdiff calibrate --imputation held_out.zarr [--target crps|coverage] [--out spread.json]

and impute the data of interest with ``--set spread=S``. Each feature is scaled by its std over
the store's observed values, so that no feature's units dominate the fit. A held-out imputation
drawn with a spread already applies it: the factor reported is the product of both.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from stdiff.datasets.atomic import write_json
from stdiff.datasets.errors import DataError
from stdiff.datasets.store import open_store
from stdiff.pipelines.jobs.impute_core import held_out_config, same_points
from stdiff.pipelines.metrics.calibration import (
    Target,
    ensemble_crps,
    fit_spread,
    interval_cover,
    spread_about_mean,
)


def held_out_points(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """``(samples (points, members), truth (points,), spread already applied)`` at the
    evaluation points of the imputation store ``path``, each feature in units of its std."""
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(path, f"not a readable output store of stdiff impute ({err})") from err
    if ds.attrs.get("kind") != "imputation" or "samples" not in ds or "eval_mask" not in ds:
        raise DataError(path, "not an output of stdiff impute (impute mode)")
    if ds.sizes["member"] < 2:
        raise DataError(path, f"{ds.sizes['member']} member: a spread needs at least 2")
    dims = [d for d in ds["samples"].dims if d != "member"]
    mask = ds["eval_mask"].transpose(*dims).values.astype(bool)
    if not mask.any():
        raise DataError(
            path,
            "no evaluation points: impute held-out data with hidden values "
            "(--set eval_ratio=0.1, e.g. with --set split=valid)",
        )
    values = ds["values"].transpose(*dims).values
    observed = ds["observed_mask"].transpose(*dims).values.astype(bool)
    k = dims.index("feature")
    other = tuple(i for i in range(len(dims)) if i != k)
    with warnings.catch_warnings():  # a feature never observed here: its scale is 1
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(np.where(observed, values, np.nan), axis=other)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    scale = np.broadcast_to(np.expand_dims(std, other), mask.shape)[mask]
    samples = ds["samples"].transpose(*dims, "member").values[mask] / scale[:, None]
    spread = float(json.loads(ds.attrs.get("config", "{}")).get("spread", 1.0))
    return samples, values[mask] / scale, spread


def calibrate_spread(
    imputation: str | Path, target: Target = "crps", level: float = 0.9, out: str | None = None
) -> dict[str, Any]:
    """Fit the spread on the held-out imputation at ``imputation``; the summary (and, with
    ``out``, the same as JSON written atomically)."""
    path = Path(imputation)
    if out is not None and Path(out).resolve() == path.resolve():
        raise ValueError(f"--out {out}: is the imputation store; choose a .json path")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out}: is a folder; choose a .json path")
    samples, truth, applied = held_out_points(path)
    s = fit_spread(samples, truth, target, level)
    after = spread_about_mean(samples, s)
    result = {
        "spread": round(s * applied, 4),
        "fitted": round(s, 4),
        "already_applied": applied,
        "target": target,
        "level": level,
        "imputation": str(path),
        "points": int(truth.size),
        "members": int(samples.shape[1]),
        "crps_before": float(ensemble_crps(samples, truth).mean()),
        "crps_after": float(ensemble_crps(after, truth).mean()),
        "cover_before": interval_cover(samples, truth, level),
        "cover_after": interval_cover(after, truth, level),
    }
    if out is not None:
        write_json(out, result)
    return result


def calibrated(cfg: Any, run: Callable[..., dict], progress: bool = True) -> tuple[Any, dict]:
    """``cfg`` (an ``ImputeConfig`` with ``calibrate``) with ``spread`` fitted on its held-out
    imputation, which ``run`` (``run_imputation``) writes to a temporary store, removed after
    the fit; and the fit's summary."""
    held, target, level = held_out_config(cfg)
    if held.eval_ratio == 0:  # the store's own evaluation points
        if "target_mask" not in open_store(held.data):
            raise DataError(held.data, "has no target_mask to fit the spread on; set "
                            "calibrate.eval_ratio (e.g. 0.1) to hide values")  # fmt: skip
        if cfg.use_targets and same_points(held, cfg):
            raise ValueError("calibrate: the held-out values are the ones this job scores "
                             "(target_mask); change calibrate.period, split or data")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="stdiff-calibrate-") as tmp:
        held = replace(held, out=str(Path(tmp) / "held_out.zarr"))
        run(held, progress)
        fit = calibrate_spread(held.out, target, level)  # type: ignore[arg-type]
    fit["imputation"] = f"held out: {json.dumps(cfg.calibrate, sort_keys=True, default=str)}"
    return replace(cfg, spread=fit["spread"]), fit
