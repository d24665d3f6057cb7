"""The job flows as real Prefect flow runs (ephemeral server): outputs, artifacts, task run
names, bad parameters refused with the CLI's messages before any task runs, and retries only of
transient errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness

from stdiff.flows.jobs import impute_flow, ingest_flow, train_flow


def _progress_logs(state) -> list[str]:
    """The training progress lines (up to the first comma) of a flow run's log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches
    only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(only)
    return [m.message.split(",")[0] for m in logs if m.message.startswith("train: step ")]


def _task_run_names(state) -> list[str]:
    """The names of the task runs of the flow run that ended in ``state`` (read from the API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(r.name for r in runs)


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_impute_flow_writes_the_store_and_an_artifact(
    harness, tmp_path: Path, trained_csdi
) -> None:
    store, run = trained_csdi
    params = {"checkpoint": str(run), "data": str(store), "out": str(tmp_path / "imp.zarr"),
              "sampler": "dpmpp_2m", "steps": 4, "members": 4, "eval_ratio": 0.2, "split": "all",
              "device": "cpu"}  # fmt: skip
    state = impute_flow(params, return_state=True)
    r = state.result()
    assert r["metrics"]["crps"] > 0
    names = _task_run_names(state)
    assert len(names) == 1 and names[0].startswith("impute-missing-values-"), names
    assert xr.open_zarr(tmp_path / "imp.zarr", consolidated=False).sizes["member"] == 4
    art = Artifact.get("impute")
    assert art is not None and "crps" in art.data


def test_train_and_ingest_flows(harness, tmp_path: Path, trained_csdi, csdi_job) -> None:
    import yaml

    store, _ = trained_csdi
    loop = {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 4, "progress": False}
    cfg = csdi_job(tmp_path / "run", store, {"channels": 8, "layers": 1}, loop=loop)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    r = train_flow(str(tmp_path / "job.yaml"), {"loop.steps": 2})
    assert r["step"] == 2 and (tmp_path / "run/checkpoints/step_000000002").is_dir()
    # a scheduled retraining into the same folder: refused without overwrite, afresh with it
    with pytest.raises(ValueError, match="holds an earlier stdiff training run"):
        train_flow(str(tmp_path / "job.yaml"), {"loop.steps": 2})
    state = train_flow(str(tmp_path / "job.yaml"), {"loop.steps": 2}, overwrite=True,
                       return_state=True)  # fmt: skip
    assert state.result()["step"] == 2
    assert _progress_logs(state) == ["train: step 2/2 (100 %)"]  # logged again: a fresh run
    # data-parallel through torchrun: 2 CPU processes (gloo), rank 0 writes the run
    d = train_flow(str(tmp_path / "job.yaml"), {"out": str(tmp_path / "ddp"), "loop.steps": 4},
                   nproc=2)  # fmt: skip
    assert d["processes"] == 2 and d["step"] == 4
    assert (tmp_path / "ddp/checkpoints/step_000000004/weights.safetensors").is_file()
    again = ingest_flow(
        str(store), str(tmp_path / "copy.zarr"), {"kind": "weather"}, return_state=True
    )
    assert again.is_failed()  # a stays store is no weather source: the flow fails, nothing written
    assert not (tmp_path / "copy.zarr").exists()


def test_bad_parameters_fail_before_work(harness, tmp_path: Path) -> None:
    state = impute_flow(
        {"checkpoint": "c", "data": "d", "out": "o", "members": 0}, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ValueError, match="members must be at least 1"):
        state.result()
    assert _task_run_names(state) == []  # refused before any task ran
    # a wrong type fails with the CLI's message (from_dict), not pydantic's
    bad = {"checkpoint": "c", "data": "d", "out": "o", "members": "many"}
    with pytest.raises(ValueError, match=r"^impute: members: expected int, got 'many'$"):
        impute_flow(bad)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['member'\]"):
        impute_flow({"checkpoint": "c", "data": "d", "out": "o", "member": 3})


def test_job_flows_have_typed_parameter_schemas() -> None:
    from prefect.utilities.callables import parameter_schema

    from stdiff.flows.jobs import forecast_flow, score_flow

    schema = parameter_schema(impute_flow.fn).model_dump()
    assert schema["properties"]["params"]["$ref"] == "#/definitions/ImputeConfig"
    fields = schema["definitions"]["ImputeConfig"]["properties"]
    assert fields["members"] == {"default": 100, "title": "Members", "type": "integer"}
    assert fields["split"]["enum"] == ["test", "valid", "train", "all"]
    assert set(schema["definitions"]["ImputeConfig"]["required"]) == {"checkpoint", "data", "out"}
    fc = parameter_schema(forecast_flow.fn).model_dump()["definitions"]["ForecastConfig"]
    assert fc["properties"]["init"] == {"items": {"type": "string"}, "title": "Init",
                                        "type": "array"}  # fmt: skip
    sc = parameter_schema(score_flow.fn).model_dump()["definitions"]["ScoreConfig"]
    assert sc["properties"]["forecasts"]["additionalProperties"] == {"type": "string"}


def test_only_transient_errors_are_retried() -> None:
    import errno

    from stdiff.datasets.errors import DataError
    from stdiff.flows.jobs import transient

    for exc in (TimeoutError(), ConnectionResetError(), OSError(errno.EIO, "I/O error"),
                OSError(errno.ESTALE, "stale file handle")):  # fmt: skip
        assert transient(exc), exc
    for exc in (ValueError("bad"), DataError("x.nc", "no variable air"), FileNotFoundError(2, "x"),
                PermissionError(13, "x"), IsADirectoryError(21, "x"), NotADirectoryError(20, "x"),
                OSError(errno.ENOSPC, "No space left"), OSError(errno.EROFS, "Read-only"),
                RuntimeError("bug"), KeyError("k")):  # fmt: skip
        assert not transient(exc), exc


def test_ingest_retries_transient_errors_only(harness, tmp_path: Path, monkeypatch) -> None:
    """A real flow run: a missing file or a bad input fails after one attempt; a dropped
    connection is retried and the run completes."""
    import stdiff.datasets.ingest as ingest_module

    calls: list[str] = []
    errors: list[BaseException] = []

    def flaky(source, out, opt, **kw):
        calls.append(source)
        if errors:
            raise errors.pop(0)
        return ingest_module.IngestResult(Path(out), False, 0.0, "ok")

    monkeypatch.setattr(ingest_module, "ingest", flaky)
    for exc in (FileNotFoundError(2, "No such file or directory", "x.nc"), ValueError("x.nc: bad")):
        calls.clear()
        errors[:] = [exc]
        state = ingest_flow("x.nc", str(tmp_path / "s.zarr"), {"kind": "weather"},
                            return_state=True)  # fmt: skip
        assert state.is_failed() and len(calls) == 1, (exc, calls)
        with pytest.raises(type(exc)):
            state.result()
    calls.clear()
    errors[:] = [ConnectionResetError(104, "Connection reset by peer")]
    r = ingest_flow("x.nc", str(tmp_path / "s.zarr"), {"kind": "weather"})
    assert len(calls) == 2 and r["summary"] == "ok"


def test_reconstruct_and_generate_flows(harness, tmp_path: Path, image_model) -> None:
    from stdiff.flows.jobs import generate_flow, reconstruct_flow

    run, store = image_model
    out = tmp_path / "mri.zarr"
    r = reconstruct_flow({"checkpoint": str(run), "data": str(store), "out": str(out),
                          "task": "mri", "steps": 4, "members": 2, "max_images": 2,
                          "device": "cpu"})  # fmt: skip
    assert r["metrics"]["psnr"] > 0 and out.is_dir() and Path(f"{out}.png").is_file()
    art = Artifact.get("reconstruct")
    assert art is not None and "psnr" in art.data and "mri.zarr.png" in art.data
    g = generate_flow({"checkpoint": str(run), "out": str(tmp_path / "g.zarr"), "n": 3,
                       "steps": 3, "guidance": 2.0, "device": "cpu"})  # fmt: skip
    assert g["metrics"]["n"] == 3 and Artifact.get("generate") is not None
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        generate_flow({"checkpoint": str(run), "out": str(tmp_path / "x.zarr"), "guidance": -1})
    assert not (tmp_path / "x.zarr").exists()


def test_impute_fans_out_over_a_dask_cluster(harness, tmp_path: Path, trained_csdi) -> None:
    import numpy as np

    from stdiff.flows.fanout import distributed_impute
    from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

    store, run = trained_csdi
    params = {"checkpoint": str(run), "data": str(store), "out": str(tmp_path / "fan.zarr"),
              "sampler": "dpmpp_2m", "steps": 4, "members": 3, "batch_size": 8, "split": "all",
              "eval_ratio": 0.2, "device": "cpu",
              "calibrate": {"eval_ratio": 0.2, "eval_seed": 7}}  # fmt: skip
    r = distributed_impute(params, n_workers=2)  # the spread is fitted once, before the tasks
    assert r["computed"] == list(range(5)) and r["complete"]  # 40 stays / 8: five chunk tasks
    ref = run_imputation(
        ImputeConfig(**{**params, "out": str(tmp_path / "ref.zarr")}), progress=False
    )
    got = xr.open_zarr(tmp_path / "fan.zarr", consolidated=False)["samples"].values
    want = xr.open_zarr(tmp_path / "ref.zarr", consolidated=False)["samples"].values
    np.testing.assert_array_equal(got, want)
    # samples are bitwise equal; a score summed over them may differ in the last bit (numpy's
    # SIMD summation depends on the buffers' alignment, which differs between processes)
    assert r["metrics"]["crps"] == pytest.approx(ref["metrics"]["crps"], rel=1e-12, abs=0)
    assert Artifact.get("impute-fan-out") is not None
    spread = json.loads(xr.open_zarr(tmp_path / "fan.zarr").attrs["config"])["spread"]
    assert spread == ref["calibration"]["spread"] != 1.0


def test_job_flows_load_their_config_from_yaml(harness, tmp_path: Path, trained_csdi) -> None:
    import yaml

    store, run = trained_csdi
    (tmp_path / "impute.yaml").write_text(yaml.safe_dump({"sampler": "dpmpp_2m", "steps": 3,
                                                          "members": 2, "split": "all"}))  # fmt: skip
    r = impute_flow({"config": str(tmp_path / "impute.yaml"), "checkpoint": str(run),
                     "data": str(store), "out": str(tmp_path / "y.zarr"), "device": "cpu"})  # fmt: skip
    assert r["sampler"] == "dpmpp_2m" and r["steps"] == 3 and r["members"] == 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"members": "many"}))
    with pytest.raises(ValueError, match=r"bad\.yaml.*members"):
        impute_flow(
            {"config": str(tmp_path / "bad.yaml"), "checkpoint": "c", "data": "d", "out": "o"}
        )


def test_distill_flow_publishes_its_students(harness, tmp_path: Path, image_model) -> None:
    from stdiff.flows.jobs import distill_flow

    run, _ = image_model
    params = {"teacher": str(run), "out": str(tmp_path / "students"), "teacher_steps": 2,
              "min_steps": 1, "stage_steps": 1, "device": "cpu",
              "loop": {"batch_size": 4, "progress": False}}  # fmt: skip
    r = distill_flow(params)
    assert [s["steps"] for s in r["students"]] == [1]
    art = Artifact.get("distill")
    assert art is not None and "steps_1" in art.data
    with pytest.raises(ValueError, match="power of two"):
        distill_flow({**params, "teacher_steps": 3})


def test_forecast_fans_out_over_a_dask_cluster(harness, tmp_path: Path, weather_builders) -> None:
    """Initial times as chunk tasks on a LocalCluster: the same store as the serial run."""
    import numpy as np
    import yaml

    from stdiff.cli import main
    from stdiff.flows.fanout import distributed_forecast
    from stdiff.pipelines.jobs.forecast import ForecastConfig, run_forecast

    grid_store, weather_job = weather_builders
    store = grid_store(tmp_path / "grid.zarr")
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(weather_job(tmp_path / "run", store)))
    assert main(["train", "--config", str(tmp_path / "w.yaml")]) == 0
    params = {"checkpoint": str(tmp_path / "run"), "data": str(store), "lead": "12h",
              "out": str(tmp_path / "fan.zarr"), "init": ["2013-02-02T00/2013-02-03T00/12h"],
              "members": 2, "steps": 3, "device": "cpu"}  # fmt: skip
    r = distributed_forecast(params, n_workers=2)
    assert r["computed"] == [0, 1, 2] and r["complete"]
    run_forecast(ForecastConfig(**{**params, "out": str(tmp_path / "ref.zarr")}), progress=False)
    got, want = (xr.open_zarr(tmp_path / n, consolidated=False) for n in ("fan.zarr", "ref.zarr"))
    for v in want.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values)
    assert Artifact.get("forecast-fan-out") is not None


def test_reconstruct_fans_out_and_resumes(harness, tmp_path: Path, image_model) -> None:
    """Batches of images as chunk tasks: the same store and scores as the serial run; a run of
    some chunks publishes nothing, and the rest completes it."""
    import numpy as np

    from stdiff.flows.fanout import distributed_reconstruct
    from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, run_reconstruction

    run, store = image_model
    params = {"checkpoint": str(run), "data": str(store), "out": str(tmp_path / "fan.zarr"),
              "task": "inpaint", "steps": 3, "members": 2, "max_images": 6, "batch_size": 2,
              "device": "cpu"}  # fmt: skip
    r = distributed_reconstruct(params, n_workers=2)
    assert r["computed"] == [0, 1, 2] and r["complete"]
    cfg = ReconstructConfig(**{**params, "out": str(tmp_path / "ref.zarr")})
    part = run_reconstruction(replace_chunks(cfg, [1]))
    assert (
        not part["complete"] and part["pending"] == [0, 2] and not (tmp_path / "ref.zarr").exists()
    )
    ref = run_reconstruction(cfg)
    assert ref["computed"] == [0, 2] and ref["complete"]
    got, want = (xr.open_zarr(tmp_path / n, consolidated=False) for n in ("fan.zarr", "ref.zarr"))
    for v in ("samples", "mean", "baseline", "degraded"):
        np.testing.assert_array_equal(got[v].values, want[v].values)
    assert r["metrics"]["psnr"] == pytest.approx(ref["metrics"]["psnr"], rel=1e-12, abs=0)
    assert (tmp_path / "ref.zarr.png").is_file() and (tmp_path / "fan.zarr.metrics.json").is_file()


def replace_chunks(cfg, chunks):
    from dataclasses import replace

    return replace(cfg, chunks=chunks)
