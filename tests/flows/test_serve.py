"""`stdiff serve` against a real local Prefect server: deployments with cron schedules are
registered, a run is triggered through the API and completes; bad serve configs fail fast."""

from __future__ import annotations

import os
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


@pytest.mark.slow
def test_serve_registers_schedules_and_runs_a_deployment(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    serve_cfg = {
        "deployments": [
            {"name": "toy-now", "flow": "toy",
             "parameters": {"config_path": str(REPO / "configs/demo_toy2d.yaml"),
                            "out_dir": str(tmp_path / "toy"),
                            "overrides": {"train.steps": 20, "data.n_train": 1000,
                                          "sample.n_samples": 200}}},
            {"name": "forecast-00-12-utc", "flow": "forecast", "cron": "0 0,12 * * *",
             "parameters": {"params": {"checkpoint": "c", "data": "d", "out": "o",
                                       "init": ["latest"]}}},
        ]
    }  # fmt: skip
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_cfg))
    logs = (tmp_path / "server.log").open("w"), (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=logs[0], stderr=subprocess.STDOUT)  # fmt: skip
    serving = None
    try:
        _wait_healthy(api, server)
        serving = subprocess.Popen([str(BIN / "stdiff"), "serve", "--config", str(tmp_path / "serve.yaml")],
                                   env=env, cwd=REPO, stdout=logs[1], stderr=subprocess.STDOUT)  # fmt: skip
        script = textwrap.dedent("""
            import asyncio, time
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment

            async def schedules():
                async with get_client() as c:
                    d = await c.read_deployment_by_name("stdiff-forecast/forecast-00-12-utc")
                    return [s.schedule.cron for s in d.schedules]

            for _ in range(120):  # until `stdiff serve` has registered the deployments
                try:
                    crons = asyncio.run(schedules())
                    break
                except Exception:
                    time.sleep(1)
            print("CRONS", crons)
            run = run_deployment("stdiff-toy-demo/toy-now", timeout=300)
            print("STATE", run.state.type.value)
        """)
        res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=480)  # fmt: skip
        assert "CRONS ['0 0,12 * * *']" in res.stdout, res.stdout + res.stderr
        assert "STATE COMPLETED" in res.stdout, res.stdout + res.stderr[-3000:]
        assert (tmp_path / "toy/metrics.json").is_file()  # the served run wrote its outputs
    finally:
        for p in (serving, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs:
            f.close()


def test_serve_check_fails_fast_on_bad_configs(tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["serve", "--config", str(REPO / "configs/serve.yaml"), "--check"])
    assert ok.exit_code == 0 and "forecast-00-12-utc: flow forecast, cron 0 0,12 * * *" in ok.output
    cases = [
        ({"name": "a", "flow": "nowcast"}, "flow 'nowcast' is not known"),
        ({"name": "a", "flow": "forecast", "cron": "61 * * * *", "parameters": {"params": {}}},
         "cron '61 * * * *' is not a valid cron string"),
        ({"name": "a", "flow": "train", "parameters": {"config": "x", "epochs": 3}},
         "unknown parameter(s) ['epochs']"),
        ({"name": "a", "flow": "impute", "parameters": {"params": {"checkpoint": "c", "data": "d",
          "out": "o", "members": 0}}}, "deployments[0] (a): impute: members must be at least 1"),
    ]  # fmt: skip
    for dep, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"deployments": [dep]}))
        res = CliRunner().invoke(app, ["serve", "--config", str(path), "--check"])
        assert res.exit_code == 2 and message in res.output, res.output
