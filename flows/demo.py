"""Prefect flow for the 2-D demo: thin orchestration over ``pipelines.jobs.toy``; passes paths only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from stdiff.pipelines.engine.config import load_config
from stdiff.pipelines.jobs.toy import ToyDemoConfig, evaluate_toy, train_toy


@task(name="train-toy-denoiser")
def train_task(config_path: str, out_dir: str, overrides: dict | None = None) -> dict:
    """Train and return the checkpoint path with the loss summary."""
    cfg = load_config(config_path, ToyDemoConfig, overrides)
    result = train_toy(cfg, out_dir)
    k = max(1, len(result.losses) // 10)
    return {
        "checkpoint": str(result.checkpoint),
        "train": {
            "seconds": result.seconds,
            "loss_first_10pct": sum(result.losses[:k]) / k,
            "loss_last_10pct": sum(result.losses[-k:]) / k,
        },
    }


@task(name="evaluate-toy-denoiser")
def evaluate_task(checkpoint: str, out_dir: str) -> dict:
    """Sample every configured sampler from the checkpoint and score it."""
    return evaluate_toy(checkpoint, out_dir)


@flow(name="stdiff-toy-demo")
def toy_demo_flow(config_path: str, out_dir: str, overrides: dict | None = None) -> dict:
    """Train, then evaluate; returns the metrics written to ``out_dir/metrics.json``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    trained = train_task(config_path, out_dir, overrides)
    metrics = evaluate_task(trained["checkpoint"], out_dir)
    return {**metrics, "train": trained["train"]}
