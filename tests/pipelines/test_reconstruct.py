"""`stdiff reconstruct` and `stdiff generate` end to end on a tiny trained image model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from PIL import Image
from typer.testing import CliRunner

from datasets.store import write_store
from pipelines.cli import app


def _store(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    n = len(images)
    ds = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), images),
            "label": ("sample", labels.astype(np.int64)),
            "split": ("sample", (np.arange(n) % 4 == 0).astype(np.int8)),  # every 4th held back
        },
        attrs={"kind": "images", "classes": ["a", "b", "c"]},
    )
    write_store(ds, path, content_hash=path.name)
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> tuple[Path, Path]:
    """A class-conditional DiT trained for a few steps on 16 x 16 blobs of 3 classes."""
    tmp = tmp_path_factory.mktemp("recon")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    labels = rng.integers(0, 3, 96)
    centres = np.array([[5, 5], [10, 10], [5, 11]])[labels] + rng.integers(-1, 2, (96, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8)
    store = _store(tmp / "blobs.zarr", (blobs * 255).astype(np.uint8)[:, None], labels)
    cfg = {
        "out": str(tmp / "run"),
        "device": "cpu",
        "data": {"store": str(store), "task": "images"},
        "model": {
            "net": "dit_custom",
            "params": {
                "in_channels": 1,
                "patch_size": 2,
                "depth": 1,
                "hidden": 32,
                "num_heads": 2,
                "num_classes": 3,
            },
        },
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "loop": {
            "steps": 30,
            "batch_size": 16,
            "cfg_dropout": 0.2,
            "log_every": 10,
            "checkpoint_every": 30,
            "progress": False,
        },
    }
    (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp / "train.yaml")])
    assert res.exit_code == 0, res.output
    return tmp / "run", store


def _reconstruct(model, out: Path, task: str, *extra: str):
    run, store = model
    args = ["reconstruct", "--checkpoint", str(run), "--data", str(store), "--out", str(out),
            "--task", task, "--steps", "4", "--members", "2",
            "--set", "max_images=3", "--set", "resample=2", "--set", "jump_length=2", *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    "task, extra",
    [
        ("inpaint", ()),
        ("outpaint", ()),
        ("superres", ("--set", "factor=4")),
        ("deblur", ()),
        ("mri", ("--set", "acceleration=4")),
        ("ct", ("--set", "views=8")),
    ],
)
def test_every_task_runs_and_writes_its_outputs(image_model, tmp_path, task, extra) -> None:
    out = tmp_path / f"{task}.zarr"
    res = _reconstruct(image_model, out, task, *extra)
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.output and "baseline" in res.output
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["samples"].shape == (3, 2, 1, 16, 16)
    for name in ("truth", "degraded", "baseline", "mean", "std"):
        assert ds[name].shape == (3, 1, 16, 16) and np.isfinite(ds[name].values).all()
    assert list(ds["image"].values) == [0, 4, 8]  # the held-back split
    m = json.loads(Path(f"{out}.metrics.json").read_text())
    assert m == ds.attrs["metrics"] and m["psnr"] > 0 and 0 <= m["within_2std"] <= 1
    assert m["evals"] >= 4
    assert Image.open(f"{out}.png").size[0] > 300
    if task in ("inpaint", "outpaint"):  # replacement keeps the known pixels exactly
        known = ds["mask"].values.astype(bool)[:, None, None]  # (3, 1, 1, 16, 16)
        s, t = ds["samples"].values, ds["truth"].values[:, None]
        assert np.allclose(np.where(known, s - t, 0), 0, atol=1e-5)
        assert 0 < known.mean() < 1


def test_result_does_not_depend_on_the_batch_size(image_model, tmp_path) -> None:
    a = _reconstruct(image_model, tmp_path / "a.zarr", "inpaint", "--set", "batch_size=1")
    b = _reconstruct(image_model, tmp_path / "b.zarr", "inpaint", "--set", "batch_size=3")
    assert a.exit_code == 0 and b.exit_code == 0
    sa = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)["samples"].values
    sb = xr.open_zarr(tmp_path / "b.zarr", consolidated=False)["samples"].values
    assert np.allclose(sa, sb, atol=1e-5)


def test_bad_input_fails_before_any_work(image_model, tmp_path) -> None:
    run, _ = image_model
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "m.png")
    cases = [
        (("inpaint", "--set", f"mask={tmp_path / 'm.png'}"), "m.png: mask shape 8x9"),
        (("superres", "--set", "factor=3"), "not divisible by 3"),
        (("inpaint", "--set", "mask=spiral"), "mask 'spiral'"),
        (("ct", "--set", "views=0"), "views"),
        (("inpaint", "--method", "paint"), "method 'paint'"),
    ]
    for args, message in cases:
        out = tmp_path / "bad.zarr"
        res = _reconstruct(image_model, out, *args)
        assert res.exit_code == 2, res.output
        assert message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not out.exists() and not Path(f"{out}.png").exists()
    # images outside the model's range [-1, 1]
    far = _store(tmp_path / "far.zarr", np.full((4, 1, 16, 16), 5.0, np.float32), np.zeros(4))
    res = CliRunner().invoke(app, ["reconstruct", "--checkpoint", str(run), "--data", str(far),
                                   "--out", str(tmp_path / "o.zarr"), "--task", "inpaint",
                                   "--set", "split=all"])  # fmt: skip
    assert res.exit_code == 2 and "outside the model's range" in res.output
    # other image size than the model's
    small = _store(tmp_path / "small.zarr", np.zeros((4, 1, 8, 8), np.uint8), np.zeros(4))
    res = CliRunner().invoke(app, ["reconstruct", "--checkpoint", str(run), "--data", str(small),
                                   "--out", str(tmp_path / "o.zarr"), "--task", "inpaint"])  # fmt: skip
    assert res.exit_code == 2 and "trained on 16x16" in res.output


def test_generate_with_guidance(image_model, tmp_path) -> None:
    run, _ = image_model
    out = tmp_path / "g.zarr"
    args = ["generate", "--checkpoint", str(run), "--out", str(out), "--label", "2",
            "--guidance", "3", "--n", "5", "--set", "steps=4", "--set", "batch_size=2"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["image"].shape == (5, 1, 16, 16) and set(ds["label"].values) == {2}
    assert Path(f"{out}.png").is_file()
    again = tmp_path / "g2.zarr"
    args[4] = str(again)
    args[-1] = "batch_size=5"
    assert CliRunner().invoke(app, args).exit_code == 0
    assert np.allclose(
        xr.open_zarr(again, consolidated=False)["image"].values, ds["image"].values, atol=1e-5
    )
    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(run), "--out", str(out),
                                   "--guidance", "-0.5"])  # fmt: skip
    assert res.exit_code == 2 and "guidance must be >= 0" in res.output
    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(run), "--out", str(out),
                                   "--label", "7"])  # fmt: skip
    assert res.exit_code == 2 and "labels [7]" in res.output
