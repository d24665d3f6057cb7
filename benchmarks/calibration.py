"""Spread calibration of an imputation model on held-out data, scored on the data of interest.

    .venv/bin/python -m benchmarks.calibration --checkpoint RUN --data STORE \\
        --fit split=valid max_stays=16 --score split=test max_stays=16 --members 10 50 \\
        --name NAME --title TITLE --write BENCHMARKS.md

For each ``--members`` count: ``stdiff impute`` of the held-out set (``--fit`` overrides, with
``eval_ratio`` hidden values), ``stdiff calibrate`` on it for each ``--targets`` (the least
ensemble CRPS; nominal 90 % coverage), then ``stdiff impute`` of the scored set (``--score``
overrides, the same hidden points in every row) as drawn (spread 1) and with each fitted
spread. The spread only moves members about their mean, so the rows of one member count share
their draws: the differences are the calibration's alone.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import torch

from benchmarks.report import emit_section
from stdiff.cliargs import set_overrides
from stdiff.pipelines.engine.config import from_dict
from stdiff.pipelines.jobs.calibrate import calibrate_spread
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation


def _impute(a, out: Path, members: int, extra: dict, spread: float = 1.0) -> dict:
    name, _, steps = a.sampler.partition(":")
    fields = dict(
        checkpoint=str(a.checkpoint), data=str(a.data), out=str(out), sampler=name,
        steps=int(steps), members=members, member_chunk=min(members, 50),
        eval_ratio=a.eval_ratio, spread=spread, overwrite=True, **extra,
    )  # fmt: skip
    return run_imputation(from_dict(ImputeConfig, fields, "calibration:"), progress=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--fit", nargs="+", default=["split=valid"], help="held-out set: KEY=VALUE")
    ap.add_argument("--score", nargs="+", default=["split=test"], help="scored set: KEY=VALUE")
    ap.add_argument("--members", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--targets", nargs="+", choices=["crps", "coverage"],
                    default=["crps", "coverage"])  # fmt: skip
    ap.add_argument("--sampler", default="consistency:1")
    ap.add_argument("--eval-ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="imputation-calibration")
    ap.add_argument("--title", default="Imputation: spread calibrated on held-out data")
    ap.add_argument("--write", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    fit, score = set_overrides(a.fit), set_overrides(a.score)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.members:
            held = _impute(a, Path(tmp) / f"fit{m}.zarr", m, fit)
            spreads = [("as drawn", 1.0, None)]
            for target in a.targets:
                r = calibrate_spread(held["out"], target)  # type: ignore[arg-type]
                spreads.append((target, r["spread"], r))
            for label, s, r in spreads:
                res = _impute(a, Path(tmp) / f"score{m}_{label}.zarr", m, score, s)
                x = res["metrics"]
                held_cov = (
                    "-" if r is None else f"{r['cover_before']:.2f} -> {r['cover_after']:.2f}"
                )
                rows.append(
                    f"| {m} | {label} | {s:.3f} | {held_cov} | {x['crps']:.4f} | "
                    f"{x['crps_physical']:.4f} | "
                    f"{x['mae']:.4f} | {x['mae_physical']:.4g} | {x['cover_50']:.2f} / "
                    f"{x['cover_90']:.2f} / {x['cover_95']:.2f} | {res['seconds']:.0f} s |"
                )
    head = (
        "| members | spread fitted for | spread | held-out 90 % coverage | CRPS | CRPS "
        "(physical) | MAE | MAE (physical) | 50 / 90 / 95 % coverage | impute wall |\n|"
        + "---|"
        * 10
    )
    body = (
        f"Checkpoint `{a.checkpoint}`, sampler {a.sampler}, {a.eval_ratio:.0%} of the observed "
        f"values hidden. Spread fitted on `{' '.join(a.fit)}`, scored on `{' '.join(a.score)}` "
        "(the same hidden points in every row of a member count; CRPS and MAE in normalised "
        "units, as CSDI reports PhysioNet, and physical, CSDI's AQI-36 form).\n\n"
        + head
        + "\n"
        + "\n".join(rows)
    )
    cmd = f"`.venv/bin/python -m benchmarks.calibration {shlex.join(argv or [])}`"
    emit_section(a.name, a.title, cmd, body, a.write)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
