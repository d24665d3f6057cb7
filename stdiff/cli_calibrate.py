"""``stdiff calibrate`` (registered on the ``stdiff`` app in ``stdiff.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stdiff.cliargs import fail


def calibrate(
    imputation: Annotated[
        Path, typer.Option(help="Output of stdiff impute on held-out data, with hidden values.")
    ],
    target: Annotated[
        str, typer.Option(help="crps (the least CRPS) or coverage (nominal --level coverage).")
    ] = "crps",
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
