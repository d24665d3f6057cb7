"""`stdiff reconstruct` and `stdiff generate` end to end on a tiny trained image model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

from stdiff.cli import app


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


@pytest.mark.parametrize("task", ["inpaint", "superres", "mri", "ct"])
def test_diffpir_runs_every_task_at_one_evaluation_per_step(image_model, tmp_path, task) -> None:
    out = tmp_path / f"{task}.zarr"
    res = _reconstruct(image_model, out, task, "--method", "diffpir", "--steps", "6",
                       "--set", "views=8", "--set", "mix=0.5")  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads(Path(f"{out}.metrics.json").read_text())
    assert m["evals"] == 6 and np.isfinite(xr.open_zarr(out)["samples"].values).all()
    if task == "inpaint":  # the data step pulls the known pixels onto the measurement
        ds = xr.open_zarr(out, consolidated=False)
        known = ds["mask"].values.astype(bool)[:, None, None]
        err = np.abs(ds["samples"].values - ds["truth"].values[:, None])[
            np.broadcast_to(known, ds["samples"].shape)
        ]
        assert err.max() < 0.05


def test_result_does_not_depend_on_the_batch_size(image_model, tmp_path) -> None:
    a = _reconstruct(image_model, tmp_path / "a.zarr", "inpaint", "--set", "batch_size=1")
    b = _reconstruct(image_model, tmp_path / "b.zarr", "inpaint", "--set", "batch_size=3")
    assert a.exit_code == 0 and b.exit_code == 0
    sa = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)["samples"].values
    sb = xr.open_zarr(tmp_path / "b.zarr", consolidated=False)["samples"].values
    assert np.allclose(sa, sb, atol=1e-5)


def test_bad_input_fails_before_any_work(image_model, make_images, tmp_path) -> None:
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
    far = make_images(tmp_path / "far.zarr", np.full((4, 1, 16, 16), 5.0, np.float32), np.zeros(4))
    res = CliRunner().invoke(app, ["reconstruct", "--checkpoint", str(run), "--data", str(far),
                                   "--out", str(tmp_path / "o.zarr"), "--task", "inpaint",
                                   "--set", "split=all"])  # fmt: skip
    assert res.exit_code == 2 and "outside the model's range" in res.output
    # other image size than the model's
    small = make_images(tmp_path / "small.zarr", np.zeros((4, 1, 8, 8), np.uint8), np.zeros(4))
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
    # per-sample generators: the batch changes only float rounding, which guidance 3 amplifies
    # over the steps (up to 2e-4 here); mixed-up noise would differ by O(1)
    assert np.allclose(
        xr.open_zarr(again, consolidated=False)["image"].values, ds["image"].values, atol=1e-3
    )
    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(run), "--out", str(out),
                                   "--guidance", "-0.5"])  # fmt: skip
    assert res.exit_code == 2 and "guidance must be >= 0" in res.output
    res = CliRunner().invoke(app, ["generate", "--checkpoint", str(run), "--out",
                                   str(tmp_path / "g7.zarr"), "--label", "7"])  # fmt: skip
    assert res.exit_code == 2 and "labels [7]" in res.output


def _blobs(
    seed: int, n: int = 8, channels: int = 1, size: int = 16, width: float = 6.0
) -> tuple[np.ndarray, ...]:
    """Blobs like the fixture's training images (width 8), from another seed and with another
    ``width`` (a new site's data)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = rng.integers(0, 3, n)
    centres = np.array([[5, 5], [10, 10], [5, 11]])[labels] + rng.integers(-1, 2, (n, 2))
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    img = (np.exp(-d2 / width) * 255).astype(np.uint8)[:, None]
    return np.repeat(img, channels, axis=1), labels


def test_checkpoint_on_another_store(image_model, make_images, tmp_path) -> None:
    """A model trained on one store reconstructs another store of the same layout; stores whose
    channels or size differ are refused in one line naming both, before anything is written."""
    run, trained_store = image_model
    images, labels = _blobs(seed=7)
    new = make_images(tmp_path / "new_site.zarr", images, labels)
    seen = xr.open_zarr(trained_store, consolidated=False)["image"].values
    assert not any((seen == img).all(axis=(1, 2, 3)).any() for img in images[:3])  # unseen
    out = tmp_path / "new.zarr"
    res = _reconstruct((run, new), out, "superres", "--set", "factor=2", "--set", "split=all")
    assert res.exit_code == 0, res.output
    rec = xr.open_zarr(out, consolidated=False)
    np.testing.assert_allclose(rec["truth"].values, images[:3] / 127.5 - 1, atol=1e-6)
    assert json.loads(Path(f"{out}.metrics.json").read_text())["images"] == 3
    # 3 channels, or 16 x 16 images of another size: one line naming the store and the model
    for name, (imgs, lab), want in [
        ("rgb.zarr", _blobs(seed=8, channels=3), "16x16 with 3 channel(s)"),
        ("big.zarr", _blobs(seed=9, size=24), "24x24 with 1 channel(s)"),
    ]:
        store = make_images(tmp_path / name, imgs, lab)
        res = _reconstruct((run, store), tmp_path / f"o_{name}", "inpaint")
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert want in res.output and "trained on 16x16 with 1 channel(s)" in res.output
        assert str(store) in res.output and str(run) in res.output
        assert not (tmp_path / f"o_{name}").exists()


def test_normalisation_comes_from_the_checkpoint(image_model, tmp_path) -> None:
    """Float images carrying their own ``image_mean``/``image_std``: the model was trained on
    uint8 pixels without statistics, so the store's are not applied (else truth would move)."""
    from stdiff.datasets.store import write_store

    run, _ = image_model
    images, labels = _blobs(seed=3, n=4)
    x = (images / 127.5 - 1).astype(np.float32)
    ds = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), x),
            "label": ("sample", labels.astype(np.int64)),
            "image_mean": ("channel", np.array([5.0], np.float32)),
            "image_std": ("channel", np.array([9.0], np.float32)),
        },
        attrs={"kind": "images"},
    )
    store = tmp_path / "float.zarr"
    write_store(ds, store, content_hash="f")
    res = _reconstruct((run, store), tmp_path / "f_out.zarr", "deblur")
    assert res.exit_code == 0, res.output
    truth = xr.open_zarr(tmp_path / "f_out.zarr", consolidated=False)["truth"].values
    np.testing.assert_allclose(truth, x[:3], atol=1e-6)


def test_rectangular_images_reconstruct_except_ct(make_images, tmp_path) -> None:
    """A model trained on 12x20 images inpaints, super-resolves and undersamples k-space on
    them (masks, k-space columns and user masks are (H, W)); CT's Radon transform needs square
    images and is refused in one line naming the store and the ingest flag."""
    import yaml

    from stdiff.pipelines.jobs.reconstruct import ReconstructConfig, build_operator

    rng = np.random.default_rng(1)
    images = (rng.random((24, 1, 12, 20)) * 255).astype(np.uint8)
    store = make_images(tmp_path / "wide.zarr", images, np.zeros(24, dtype=np.int64))
    cfg = {"out": str(tmp_path / "run"), "device": "cpu", "data": {"store": str(store), "task": "images"},
           "model": {"net": "dit_custom", "params": {"in_channels": 1, "patch_size": 2, "depth": 1,
                                                      "hidden": 16, "num_heads": 2}},
           "loop": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "progress": False}}  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml")])
    assert res.exit_code == 0, res.output
    mask = np.ones((12, 20), dtype=np.uint8)
    mask[:, 10:] = 0
    np.save(tmp_path / "mask.npy", mask)
    model = (tmp_path / "run", store)
    for task, extra in (("inpaint", ()), ("inpaint", ("--set", f"mask={tmp_path / 'mask.npy'}")),
                        ("superres", ("--set", "factor=2")), ("mri", ("--set", "acceleration=4"))):  # fmt: skip
        out = tmp_path / f"{task}{len(extra)}.zarr"
        res = _reconstruct(model, out, task, *extra)
        assert res.exit_code == 0, res.output
        ds = xr.open_zarr(out, consolidated=False)
        assert ds["samples"].shape[-2:] == (12, 20) and np.isfinite(ds["samples"].values).all()
    assert (ds := xr.open_zarr(tmp_path / "inpaint2.zarr", consolidated=False))["mask"].shape[
        -2:
    ] == (12, 20)
    cfg = ReconstructConfig(checkpoint="run", data="wide.zarr", out="o.zarr", task="ct")
    with pytest.raises(ValueError, match=r"wide.zarr: images are 7x9; CT .*--image-size N"):
        build_operator(cfg, np.arange(1), (1, 1, 7, 9))
