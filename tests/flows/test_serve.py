"""`stdiff serve` against a real local Prefect server: deployments with cron schedules and typed
parameter schemas are registered, a triggered run completes, a cron deployment gets scheduled
runs that complete on their own, and SIGTERM stops serving cleanly; bad serve configs, and
deployments whose inputs are missing, fail fast."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stdiff.cli import app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOY = {"config_path": str(REPO / "configs/demo_toy2d.yaml"),
       "overrides": {"train.steps": 20, "data.n_train": 1000, "sample.n_samples": 200}}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("prefect server did not become healthy")


def _inputs(root: Path) -> dict[str, str]:
    """A checkpoint folder and a zarr store as `serve --check` accepts them (not loadable)."""
    (root / "run/checkpoints/step_000000001").mkdir(parents=True)
    (root / "store.zarr").mkdir()
    (root / "store.zarr/zarr.json").write_text("{}")
    return {"checkpoint": str(root / "run"), "data": str(root / "store.zarr")}


def _ask(env: dict[str, str], script: str, timeout: float) -> dict:
    """Run ``script`` (async ``main(client)`` returning JSON) against the server; its answer."""
    code = textwrap.dedent("""
        import asyncio, json
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import *
        from prefect.client.schemas.sorting import *
        """) + textwrap.dedent(script) + textwrap.dedent("""
        async def _run():
            async with get_client() as client:
                return await main(client)
        print("ANSWER", json.dumps(asyncio.run(_run()), default=str))
        """)  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    for line in res.stdout.splitlines():
        if line.startswith("ANSWER "):
            return json.loads(line.removeprefix("ANSWER "))
    raise AssertionError(res.stdout + res.stderr[-3000:])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `prefect server start` on a free port and `stdiff serve` with three deployments: the toy
    demo (triggered), the toy demo every minute (cron), a forecast twice a day (never due)."""
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "5", "OMP_NUM_THREADS": "1"}  # fmt: skip
    forecast = {**_inputs(tmp), "out": str(tmp / "fc.zarr"), "init": ["latest"], "members": 2}
    serve_cfg = {"deployments": [
        {"name": "toy-now", "flow": "toy",
         "parameters": {**TOY, "out_dir": str(tmp / "toy-now")}},
        {"name": "toy-every-minute", "flow": "toy", "cron": "* * * * *",
         "parameters": {**TOY, "out_dir": str(tmp / "toy-cron")}},
        {"name": "forecast-00-12-utc", "flow": "forecast", "cron": "0 0,12 * * *",
         "parameters": {"params": forecast}},
    ]}  # fmt: skip
    (tmp / "serve.yaml").write_text(yaml.safe_dump(serve_cfg))
    logs = (tmp / "server.log").open("w"), (tmp / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=logs[0], stderr=subprocess.STDOUT)  # fmt: skip
    serving = None
    try:
        _wait_healthy(api, server)
        serving = subprocess.Popen([sys.executable, "-m", "stdiff", "serve", "--config",
                                    str(tmp / "serve.yaml")], env=env, cwd=REPO, stdout=logs[1],
                                   stderr=subprocess.STDOUT)  # fmt: skip
        end = time.monotonic() + 180  # until `stdiff serve` has registered the deployments
        while "serving 3 deployment(s)" not in (tmp / "serve.log").read_text():
            assert serving.poll() is None and time.monotonic() < end, (
                tmp / "serve.log"
            ).read_text()
            time.sleep(1)
        yield {"env": env, "tmp": tmp, "serving": serving, "log": tmp / "serve.log"}
    finally:
        for p in (serving, server):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs:
            f.close()


@pytest.mark.slow
def test_serve_registers_schedules_and_typed_parameter_schemas(served) -> None:
    got = _ask(served["env"], """
        async def main(client):
            d = await client.read_deployment_by_name("stdiff-forecast/forecast-00-12-utc")
            return {"crons": [s.schedule.cron for s in d.schedules],
                    "schema": d.parameter_openapi_schema,
                    "enforced": d.enforce_parameter_schema}
        """, timeout=180)  # fmt: skip
    assert got["crons"] == ["0 0,12 * * *"]
    schema = got["schema"]
    assert schema["properties"]["params"]["$ref"] == "#/definitions/ForecastConfig"
    fields = schema["definitions"]["ForecastConfig"]["properties"]
    assert fields["members"]["type"] == "integer" and fields["lead"]["default"] == "72h"
    assert fields["init"]["type"] == "array" and fields["layout"]["enum"] == ["wb2", "stdiff"]
    assert got["enforced"] is False  # the flow validates, with the CLI's messages


@pytest.mark.slow
def test_served_deployment_runs_when_triggered(served) -> None:
    script = textwrap.dedent("""
        from prefect.deployments import run_deployment
        run = run_deployment("stdiff-toy-demo/toy-now", timeout=300)
        print("STATE", run.state.type.value)
        """)
    res = subprocess.run([sys.executable, "-c", script], env=served["env"], capture_output=True,
                         text=True, timeout=420)  # fmt: skip
    assert "STATE COMPLETED" in res.stdout, res.stdout + res.stderr[-3000:]
    assert (served["tmp"] / "toy-now/metrics.json").is_file()  # the served run wrote its outputs


@pytest.mark.slow
def test_served_run_with_a_bad_parameter_fails_with_the_cli_message(served) -> None:
    """The server does not enforce the schema: the flow's from_dict message reaches the run."""
    params = yaml.safe_load((served["tmp"] / "serve.yaml").read_text())["deployments"][2]
    bad = {"params": {**params["parameters"]["params"], "members": "many"}}
    script = textwrap.dedent(f"""
        from prefect.deployments import run_deployment
        run = run_deployment("stdiff-forecast/forecast-00-12-utc", parameters={bad!r},
                             timeout=300)
        print("STATE", run.state.type.value, run.state.message)
        """)
    res = subprocess.run([sys.executable, "-c", script], env=served["env"], capture_output=True,
                         text=True, timeout=420)  # fmt: skip
    assert "STATE FAILED" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "forecast: members: expected int, got 'many'" in res.stdout, res.stdout


@pytest.mark.slow
def test_cron_deployment_runs_on_its_own(served) -> None:
    """Nobody triggers it: the server's scheduler creates runs of the every-minute deployment
    (it failed on SQLAlchemy 2.1) and `serve` runs them. Waits at most 5 minutes."""
    got = _ask(served["env"], """
        import time
        async def main(client):
            d = await client.read_deployment_by_name("stdiff-toy-demo/toy-every-minute")
            only = DeploymentFilter(id=DeploymentFilterId(any_=[d.id]))
            end, seen = time.monotonic() + 300, []
            while time.monotonic() < end:
                runs = await client.read_flow_runs(deployment_filter=only)
                seen = [(r.state_type.value, r.auto_scheduled) for r in runs]
                if any(r.state_type.value == "COMPLETED" for r in runs):
                    break
                await asyncio.sleep(3)
            return seen
        """, timeout=360)  # fmt: skip
    assert ["COMPLETED", True] in got, got
    assert (served["tmp"] / "toy-cron/metrics.json").is_file()


@pytest.mark.slow
def test_sigterm_stops_serving_cleanly(served) -> None:
    proc = served["serving"]
    time.sleep(2)
    before = len(served["log"].read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log = served["log"].read_text()[before:]  # what stopping printed
    assert "stopped serving" in log and "All deployments have been paused" in log
    assert "never awaited" not in log and "Traceback" not in log, log[-3000:]


def _check(tmp_path: Path, deployments: list[dict]):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"deployments": deployments}))
    return CliRunner().invoke(app, ["serve", "--config", str(path), "--check"])


def test_serve_check_fails_fast_on_bad_configs(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    params = {**inputs, "out": "o", "init": ["latest"]}
    ok = _check(tmp_path, [{"name": "f", "flow": "forecast", "cron": "0 0,12 * * *",
                            "parameters": {"params": params}}])  # fmt: skip
    assert ok.exit_code == 0 and "f: flow forecast, cron 0 0,12 * * *" in ok.output, ok.output
    assert "parameters and inputs checked; not serving" in ok.output
    cases = [
        ({"name": "a", "flow": "nowcast"}, "flow 'nowcast' is not known"),
        ({"name": "a", "flow": "forecast", "cron": "61 * * * *", "parameters": {"params": params}},
         "cron '61 * * * *' is not a valid cron string"),
        ({"name": "a", "flow": "train", "parameters": {"config": "x", "epochs": 3}},
         "unknown parameter(s) ['epochs']"),
        ({"name": "a", "flow": "forecast"}, "parameter(s) ['params'] of flow 'forecast' are missing"),
        ({"name": "a", "flow": "impute", "parameters": {"params": {**inputs, "out": "o",
          "members": 0}}}, "deployments[0] (a): impute: members must be at least 1"),
    ]  # fmt: skip
    for dep, message in cases:
        res = _check(tmp_path, [dep])
        assert res.exit_code == 2 and message in res.output, res.output


def test_serve_check_refuses_missing_inputs(tmp_path: Path, monkeypatch) -> None:
    """Every input a deployment reads must exist and be the right kind of thing: one line naming
    the deployment, the parameter and the path, exit 2."""
    inputs = _inputs(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    fc = {**inputs, "out": "o", "init": ["latest"]}
    missing = str(tmp_path / "missing")
    cases = [
        ("forecast", {"params": {**fc, "checkpoint": missing}},
         f"params.checkpoint '{missing}': not found"),
        ("forecast", {"params": {**fc, "checkpoint": str(tmp_path / "empty")}},
         f"params.checkpoint '{tmp_path / 'empty'}': no checkpoint in this folder"),
        ("forecast", {"params": {**fc, "data": str(tmp_path / "file.txt")}},
         f"params.data '{tmp_path / 'file.txt'}': is not a folder (expected a store)"),
        ("impute", {"params": {**inputs, "out": "o", "data": str(tmp_path / "empty")}},
         f"params.data '{tmp_path / 'empty'}': is not a zarr store"),
        ("score", {"params": {"forecasts": {"ours": inputs["data"], "theirs": missing},
                              "data": inputs["data"], "out": "s"}},
         f"params.forecasts.theirs '{missing}': not found"),
        ("train", {"config": missing}, f"config '{missing}': not found"),
        ("toy", {"config_path": str(tmp_path), "out_dir": "o"},
         f"config_path '{tmp_path}': is not a file"),
        ("ingest", {"source": missing, "out": "o", "options": {"kind": "weather"}},
         f"source '{missing}': not found"),
        ("ingest", {"source": [str(tmp_path / "file.txt"), missing], "out": "o",
                    "options": {"kind": "timeseries"}}, f"source.1 '{missing}': not found"),
    ]  # fmt: skip
    for flow, parameters, message in cases:
        res = _check(tmp_path, [{"name": "d", "flow": flow, "parameters": parameters}])
        assert res.exit_code == 2, (flow, res.output)
        assert f"serve: deployments[0] (d): {message}" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    # a training config named as in the docs is the shipped one; its store must exist
    monkeypatch.chdir(tmp_path)
    res = _check(tmp_path, [{"name": "d", "flow": "train",
                             "parameters": {"config": "configs/train_ncep_dit.yaml"}}])  # fmt: skip
    assert res.exit_code == 2
    assert ("(d): configs/train_ncep_dit.yaml: data.store 'outputs/ncep.zarr': not found"
            in res.output), res.output  # fmt: skip
    res = _check(tmp_path, [{"name": "d", "flow": "train", "parameters": {
        "config": "configs/train_ncep_dit.yaml", "overrides": {"data.store": inputs["data"]}}}])  # fmt: skip
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(REPO)
    # the shipped config points at outputs the other jobs write: refused until they exist
    shipped = CliRunner().invoke(
        app, ["serve", "--config", str(REPO / "configs/serve.yaml"), "--check"]
    )
    if not (REPO / "outputs/train_ncep_dit").exists():
        assert shipped.exit_code == 2
        assert "(forecast-00-12-utc): params.checkpoint 'outputs/train_ncep_dit'" in shipped.output
