"""``stdiff calibrate`` and ``stdiff info`` (registered on the ``stdiff`` app in ``stdiff.cli``,
which keeps the other commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stdiff.cliargs import fail


def calibrate(
    imputation: Annotated[
        Path, typer.Option(help="Output of stdiff impute on held-out data, with hidden values.")
    ],
    target: Annotated[
        str, typer.Option(help="coverage (nominal --level coverage) or crps (the least CRPS).")
    ] = "coverage",
    level: Annotated[float, typer.Option(help="Central interval for coverage.")] = 0.9,
    out: Annotated[Path | None, typer.Option(help="Also write the fit as JSON here.")] = None,
) -> None:
    """Fit the spread factor of an imputation model's members on held-out data; impute new data
    with --set spread=S."""
    from stdiff.pipelines.jobs.calibrate import calibrate_spread

    if target not in ("crps", "coverage"):
        fail(f"--target {target!r} is not valid; choose crps or coverage")
    try:
        r = calibrate_spread(imputation, target, level, None if out is None else str(out))  # type: ignore[arg-type]
    except (ValueError, OSError) as e:  # DataError is a ValueError
        fail(str(e))
    pct = round(100 * level)
    typer.echo(
        f"spread {r['spread']:.3f} ({target}, {r['points']} held-out points x {r['members']} "
        f"members): CRPS {r['crps_before']:.4f} -> {r['crps_after']:.4f}, {pct}% coverage "
        f"{r['cover_before']:.3f} -> {r['cover_after']:.3f}; impute with --set spread="
        f"{r['spread']:.3f}"
    )


def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the registered schedules, samplers, parameterisations and loss weightings."""
    from stdiff.diffusion.losses import WEIGHTINGS
    from stdiff.diffusion.precond import PREDICTIONS
    from stdiff.diffusion.samplers import SAMPLERS
    from stdiff.diffusion.schedules import SCHEDULES
    from stdiff.pipelines.engine.models import KINDS, NETS

    data = {
        "schedules": sorted(SCHEDULES),
        "samplers": {
            k: {"stochastic": v.stochastic, "evals_for_10_steps": v.evals(10) if v.evals else None}
            for k, v in SAMPLERS.items()
        },
        "predictions": list(PREDICTIONS),
        "weightings": list(WEIGHTINGS),
        "model_kinds": list(KINDS),
        "nets": sorted(NETS),
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, names in data.items():
        typer.echo(f"{key.replace('_', ' ') + ':':<13}" + ", ".join(names))
