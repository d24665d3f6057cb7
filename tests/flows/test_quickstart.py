"""The quickstart flow end to end on the repository's NCEP sample (what `make demo` runs): the
report, task runs named after their jobs, and the training's progress in the flow run's log."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness

from stdiff.flows.quickstart import SAMPLE, quickstart_flow


def _task_runs_and_logs(flow_run_id) -> tuple[list[str], list[str]]:
    """The flow run's task run names and log messages, read back from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return sorted(r.name.rsplit("-", 1)[0] for r in runs), [log.message for log in logs]


def test_quickstart_runs_offline_and_reports(tmp_path: Path) -> None:
    assert SAMPLE.is_file() and SAMPLE.stat().st_size < 2_000_000  # kept in the repository
    with prefect_test_harness(server_startup_timeout=120):
        state = quickstart_flow(out=str(tmp_path / "qs"), steps=6, members=2,
                                inits="2013-03-10T00/2013-03-12T00/48h", lead="12h",
                                return_state=True)  # fmt: skip
        r = state.result()
        art = Artifact.get("quickstart")
        names, logs = _task_runs_and_logs(state.state_details.flow_run_id)
    assert names == ["forecast-ensemble", "ingest", "score-forecasts", "train"]
    # training logs its progress (every steps // 10 = 1 step here), not only its end
    progress = [m for m in logs if m.startswith("train: step ")]
    assert [m.split(",")[0] for m in progress] == [f"train: step {i}/6 ({100 * i / 6:.0f} %)"
                                                   for i in range(1, 7)], progress  # fmt: skip
    assert "loss" in progress[-1] and "samples/s" in progress[-1]
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
