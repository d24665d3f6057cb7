"""The quickstart flow end to end on the repository's NCEP sample (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness

from stdiff.flows.quickstart import SAMPLE, quickstart_flow


def test_quickstart_runs_offline_and_reports(tmp_path: Path) -> None:
    assert SAMPLE.is_file() and SAMPLE.stat().st_size < 2_000_000  # kept in the repository
    with prefect_test_harness(server_startup_timeout=120):
        r = quickstart_flow(out=str(tmp_path / "qs"), steps=6, members=2,
                            inits="2013-03-10T00/2013-03-12T00/48h", lead="12h")  # fmt: skip
        art = Artifact.get("quickstart")
    report = Path(r["report"]).read_text()
    assert "| persistence |" in report and "| stdiff |" in report and "scores_vs_lead.png" in report
    fc = xr.open_zarr(r["forecast"], consolidated=False)
    assert fc.sizes["time"] == 2 and fc.sizes["realization"] == 2  # WeatherBench 2 layout
    assert fc.sizes["prediction_timedelta"] == 2
    assert "## air: RMSE (K) by lead" in report and "## air: spread-skill ratio by lead" in report
    assert (Path(r["out"]) / "scores/scores_vs_lead.png").is_file()
    assert art is not None and "REPORT.md" in art.data and "air stdiff CRPS" in art.data
    # a second run reuses the store (same inputs, same options: the ingest is a no-op)
    store = Path(r["store"])
    stamp = (store / "zarr.json").stat().st_mtime_ns
    with prefect_test_harness(server_startup_timeout=120):
        quickstart_flow(out=str(tmp_path / "qs"), steps=2, members=1,
                        inits="2013-03-10T00", lead="6h")  # fmt: skip
    assert (store / "zarr.json").stat().st_mtime_ns == stamp
