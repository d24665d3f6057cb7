"""The demo as a real Prefect flow run (ephemeral server via prefect_test_harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from stdiff.flows.demo import toy_demo_flow, train_task

REPO = Path(__file__).resolve().parents[2]
TINY = {"train.steps": 40, "train.batch_size": 128, "sample.n_samples": 300, "device": "cpu"}


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_train_task_fn(tmp_path: Path) -> None:
    out = train_task.fn(str(REPO / "configs/demo_toy2d.yaml"), str(tmp_path), TINY)
    assert Path(out["checkpoint"]).is_file() and out["train"]["seconds"] > 0


def test_flow_run_writes_outputs(harness, tmp_path: Path) -> None:
    metrics = toy_demo_flow(str(REPO / "configs/demo_toy2d.yaml"), str(tmp_path), TINY)
    assert set(metrics["samplers"]) == {"heun", "dpmpp_2m", "ddpm"}
    for name in ("checkpoint.safetensors", "samples.zarr", "samples.png", "metrics.json"):
        assert (tmp_path / name).exists(), name
