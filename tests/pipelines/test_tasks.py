"""Tasks as one concept each: the registry, the protocol, and a new task added by one module
plus one registry line, trained end to end through the CLI without touching the engine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.pipelines.engine.runner import load_denoiser
from stdiff.pipelines.tasks import TASKS, get_task, require_job
from stdiff.pipelines.tasks.base import Task

DENOISE = """
import torch

from stdiff.datasets.store import open_store
from stdiff.datasets.windows import SampleWindows
from stdiff.diffusion.conditioning import Condition
from stdiff.pipelines.tasks.base import TaskData, store_metadata


class DenoiseTask:
    name, jobs, channel_dim = "denoise", (), 1

    def validate(self, data):
        if data.max_samples == 1:
            raise ValueError("data.max_samples: the denoise task needs at least 2 images")

    def check_store(self, ds, data):
        if "image" not in ds:
            raise ValueError(f"{data.store}: no images")

    def net_params(self, data, model):
        return {**model.params, "context_channels": 1}

    def datasets(self, data):
        train = SampleWindows(data.store, "sample", ["image"])

        def to_batch(batch, gen):
            x0 = batch["image"]
            noisy = x0 + 0.2 * torch.randn(x0.shape, generator=gen)
            return x0, Condition(context=noisy), None

        meta = store_metadata(open_store(data.store), ["image"])
        return TaskData(train, None, to_batch, meta)

    def sample_dump(self, data, model, seed, items):
        return None


TASK = DenoiseTask()
"""


def test_every_registered_task_implements_the_protocol() -> None:
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.jobs
    assert require_job("imputation", "impute", "ckpt").name == "imputation"
    with pytest.raises(ValueError, match="trained for the 'forecast' task, not imputation"):
        require_job("forecast", "impute", "ckpt")
    with pytest.raises(ValueError, match=r"data.task 'dance' is not known; choose one of"):
        get_task("dance")


def test_a_new_task_is_one_module_and_one_registry_line(tmp_path, make_images, monkeypatch):
    (tmp_path / "denoise_task.py").write_text(DENOISE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TASKS, "denoise", "denoise_task")  # the one registry line
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 1, 8, 8)).astype(np.uint8)
    store = make_images(tmp_path / "img.zarr", images, rng.integers(0, 3, 8))
    cfg = {
        "out": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"store": str(store), "task": "denoise"},
        "model": {"net": "dit_custom", "params": {"in_channels": 1, "patch_size": 2, "depth": 1,
                                                    "hidden": 16, "num_heads": 2}},
        "loop": {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "progress": False},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    assert list((Path(cfg["out"]) / "checkpoints").glob("step_*/weights.safetensors"))
    denoiser, tcfg, _ = load_denoiser(cfg["out"])  # the resolved params are in the checkpoint
    assert tcfg.data.task == "denoise" and denoiser.net.context_channels == 1
    # the task's own validation runs with the config; no jobs read its checkpoints
    bad = runner.invoke(app, ["train", "--config", str(tmp_path / "job.yaml"),
                              "--set", "data.max_samples=1", "--set", f"out={tmp_path / 'r2'}"])  # fmt: skip
    assert bad.exit_code == 2 and "data.max_samples" in bad.output
    assert not (tmp_path / "r2").exists()
    gen = runner.invoke(app, ["generate", "--checkpoint", cfg["out"],
                              "--out", str(tmp_path / "g.zarr"), "--n", "2"])  # fmt: skip
    assert gen.exit_code == 2 and "'denoise' task" in gen.output
    assert not (tmp_path / "g.zarr").exists()
    del sys.modules["denoise_task"]


def test_image_channels_follow_the_store(tmp_path, make_images) -> None:
    """``in_channels`` is filled in from the store's images, and a config that says otherwise
    is refused naming the key (the network would fail on the first batch)."""
    from stdiff.pipelines.engine.models import ModelConfig
    from stdiff.pipelines.tasks.base import DataConfig

    rgb = make_images(tmp_path / "rgb.zarr", np.zeros((8, 3, 8, 8), np.uint8), np.zeros(8))
    data = DataConfig(store=str(rgb), task="images")
    task = get_task("images")
    params = task.net_params(data, ModelConfig(net="unet", params={"base_channels": 8}))
    assert params["in_channels"] == 3
    with pytest.raises(ValueError, match=r"model.params.in_channels is 1 .* have 3 channel"):
        task.net_params(data, ModelConfig(net="dit_custom", params={"in_channels": 1}))
