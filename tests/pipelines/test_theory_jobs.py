"""The issue-9 techniques as jobs on a tiny image store: distillation (CLI, resume, students usable
by ``stdiff generate``), latent diffusion (autoencoder run -> latent DiT -> decoded samples),
IDDPM's hybrid objective and the energy parameterisation through ``stdiff train``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.pipelines.engine.checkpoint import load_checkpoint
from stdiff.pipelines.engine.runner import load_denoiser

RUNNER = CliRunner()
LOOP = {"batch_size": 8, "log_every": 1, "checkpoint_every": 2, "progress": False}


def _invoke(*args: str):
    return RUNNER.invoke(app, list(args))


def _yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _distill_cfg(tmp: Path, teacher: Path | str, **kw) -> Path:
    cfg = {"teacher": str(teacher), "out": str(tmp / "students"), "device": "cpu",
           "stage_steps": 2, "loop": LOOP}  # fmt: skip
    cfg.update(kw)
    return _yaml(tmp / "distill.yaml", cfg)


def _generate(tmp: Path, run: Path, sampler: str, steps: int) -> np.ndarray:
    out = tmp / f"g_{run.name}.zarr"
    res = _invoke("generate", "--checkpoint", str(run), "--out", str(out), "--n", "3",
                  "--set", f"sampler={sampler}", "--set", f"steps={steps}",
                  "--set", "spacing=uniform_t", "--set", "device=cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    images = xr.open_zarr(out, consolidated=False)["image"].values
    assert images.shape == (3, 1, 16, 16) and np.isfinite(images).all()
    return images


def test_progressive_distillation_cli_writes_usable_students_and_resumes(image_model, tmp_path):
    run, _ = image_model
    cfg = _distill_cfg(tmp_path, run, teacher_steps=4, min_steps=1)
    res = _invoke("distill", "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert "--steps 2 --spacing uniform_t" in res.output and "--steps 1" in res.output
    info = json.loads((tmp_path / "students/distill.json").read_text())
    assert [s["steps"] for s in info["students"]] == [2, 1]
    student = Path(info["students"][-1]["run"])
    _, _, meta = load_checkpoint(
        next((student / "checkpoints").glob("step_*2")) / "weights.safetensors"
    )
    assert meta["distilled"]["steps"] == 1 and meta["distilled"]["sampler"] == "ddim"
    _generate(tmp_path, student, "ddim", 1)
    before = load_denoiser(student)[0].net.state_dict()
    again = _invoke("distill", "--config", str(cfg))  # finished stages are skipped
    assert again.exit_code == 0, again.output
    after = load_denoiser(student)[0].net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_consistency_distillation_cli(image_model, tmp_path):
    run, _ = image_model
    cfg = _distill_cfg(tmp_path, run, method="consistency", levels=8)
    res = _invoke("distill", "--config", str(cfg))
    assert res.exit_code == 0, res.output
    den, tcfg, _ = load_denoiser(tmp_path / "students/consistency")
    assert tcfg.model.kind == "consistency" and type(den).__name__ == "ConsistencyDenoiser"
    _generate(tmp_path, tmp_path / "students/consistency", "consistency", 2)


def test_crps_distillation_cli_fine_tunes_the_teacher_into_a_one_evaluation_generator(
    image_model, tmp_path
):
    """``method: crps`` starts from the teacher's weights, trains on the fair CRPS and is sampled
    in one evaluation (members differ); any other sampler is refused in one line."""
    run, _ = image_model
    cfg = _distill_cfg(tmp_path, run, method="crps", stage_steps=3)
    res = _invoke("distill", "--config", str(cfg))
    assert res.exit_code == 0, res.output
    assert "students/crps: sample with --sampler consistency --steps 1" in res.output
    den, tcfg, meta = load_denoiser(tmp_path / "students/crps")
    assert tcfg.loop.objective == "crps" and tcfg.model.kind == "score"
    assert meta["distilled"]["method"] == "crps"
    teacher = load_denoiser(run)[0].net.state_dict()
    moved = [k for k, v in den.net.state_dict().items() if not torch.equal(v, teacher[k])]
    assert moved  # fine-tuned, from the teacher's weights (same names and shapes)
    images = _generate(tmp_path, tmp_path / "students/crps", "consistency", 1)
    assert np.abs(images[0] - images[1]).max() > 0
    bad = _invoke("generate", "--checkpoint", str(tmp_path / "students/crps"), "--out",
                  str(tmp_path / "bad.zarr"), "--n", "2", "--set", "sampler=ddim",
                  "--set", "steps=4", "--set", "device=cpu")  # fmt: skip
    assert bad.exit_code == 2 and "--sampler consistency --steps 1" in bad.output, bad.output
    assert not (tmp_path / "bad.zarr").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"teacher_steps": 6, "min_steps": 4}, "power of two"),
     ({"teacher": "/nonexistent/run"}, "checkpoint not found"),
     ({"method": "consistency", "levels": 1}, "levels must be at least 2"),
     ({"method": "consistency", "rollout": 2}, "rollout=2 needs method: crps"),
     ({"method": "crps", "rollout": 2}, "needs a forecast teacher (data.task: forecast)")],
)  # fmt: skip
def test_distill_bad_input_is_one_line_and_writes_nothing(image_model, tmp_path, extra, message):
    run, _ = image_model
    cfg = _distill_cfg(tmp_path, extra.pop("teacher", run), **extra)
    res = _invoke("distill", "--config", str(cfg))
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "students").exists()


def _train(tmp: Path, name: str, store: Path, model: dict, loop: dict | None = None, **kw) -> Path:
    cfg = {"out": str(tmp / name), "device": "cpu", "data": {"store": str(store),
           "task": "images", **kw.pop("data", {})}, "model": model,
           "optim": {"lr": 1e-3, "warmup_steps": 1}, "loop": {**LOOP, "steps": 3, **(loop or {})},
           **kw}  # fmt: skip
    res = _invoke("train", "--config", str(_yaml(tmp / f"{name}.yaml", cfg)))
    assert res.exit_code == 0, res.output
    return tmp / name


def _train_fails(tmp: Path, store: Path, model: dict, loop: dict, message: str, **kw) -> None:
    """A training config that must be refused with exit code 2 and ``message``."""
    cfg = {"out": str(tmp / "bad"), "device": "cpu", "model": model,
           "data": {"store": str(store), "task": "images"},
           "loop": {**LOOP, "steps": 1, **loop}, **kw}  # fmt: skip
    res = _invoke("train", "--config", str(_yaml(tmp / "bad.yaml", cfg)))
    assert res.exit_code == 2 and message in res.output, res.output


DIT = {"net": "dit_custom", "params": {"in_channels": 1, "patch_size": 2, "depth": 1,
       "hidden": 32, "num_heads": 2, "num_classes": 3}}  # fmt: skip


def test_latent_diffusion_end_to_end(image_model, tmp_path):
    _, store = image_model
    ae_model = {"net": "autoencoder", "params": {"in_channels": 1, "latent_channels": 4,
                "channels": 8, "channel_mult": [1, 2, 2]}}  # fmt: skip
    ae = _train(tmp_path, "ae", store, ae_model, {"objective": "autoencoder"})
    lat_model = {**DIT, "params": {**DIT["params"], "in_channels": 4, "patch_size": 1}}
    ldm = _train(tmp_path, "ldm", store, lat_model, {"cfg_dropout": 0.2},
                 data={"latent": str(ae)}, schedule={"name": "edm"})  # fmt: skip
    _, _, meta = load_denoiser(ldm)
    assert meta["latent"]["shape"] == [4, 4, 4] and meta["latent"]["size"] == [16, 16]
    assert meta["latent"]["scale"] > 0
    out = tmp_path / "g.zarr"
    res = _invoke("generate", "--checkpoint", str(ldm), "--out", str(out), "--n", "3",
                  "--set", "steps=3", "--set", "device=cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert xr.open_zarr(out, consolidated=False)["image"].shape == (3, 1, 16, 16)


def test_autoencoder_objective_needs_the_autoencoder_net(image_model, tmp_path):
    _, store = image_model
    _train_fails(tmp_path, store, DIT, {"objective": "autoencoder"}, "model.net: autoencoder")


def test_hybrid_objective_trains_learned_variances_and_samples(image_model, tmp_path):
    _, store = image_model
    model = {**DIT, "params": {**DIT["params"], "learn_sigma": True}, "prediction": "eps",
             "sigma_data": 1.0, "noise_conditioning": "timestep", "kind": "learned_variance"}  # fmt: skip
    run = _train(tmp_path, "iddpm", store, model, {"objective": "hybrid"},
                 schedule={"name": "vp_cosine"})  # fmt: skip
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in recs)
    den, _, _ = load_denoiser(run)
    assert type(den).__name__ == "VarianceDenoiser"
    _generate(tmp_path, run, "iddpm", 5)
    bad = {**model, "kind": "score", "params": DIT["params"]}
    _train_fails(tmp_path, store, bad, {"objective": "hybrid"}, "model.kind: learned_variance",
                 schedule={"name": "vp_cosine"})  # fmt: skip


def test_energy_model_trains_and_samples_with_mala(image_model, tmp_path):
    _, store = image_model
    model = {**DIT, "kind": "energy"}
    run = _train(tmp_path, "ebm", store, model, {"cfg_dropout": 0.3})
    den, _, _ = load_denoiser(run)
    assert type(den).__name__ == "EnergyDenoiser"
    x = torch.randn(2, 1, 16, 16)
    e = den.energy(x, torch.full((2,), 1.0))
    assert e.shape == (2,) and bool(torch.isfinite(e).all())
    from stdiff.diffusion.conditioning import Condition
    from stdiff.diffusion.guidance import classifier_free_guidance
    from stdiff.diffusion.samplers import sample

    cond = Condition(labels=torch.tensor([0, 2]))
    guided = classifier_free_guidance(den, 2.0)
    sigma = torch.full((2,), 0.7)
    with torch.no_grad():  # the guided energy's gradient is the guided denoiser
        _, g = guided.energy_and_grad(x, sigma, cond)
        torch.testing.assert_close(guided(x, sigma, cond), x - 0.49 * g, rtol=1e-4, atol=1e-5)
    xs = sample(guided, (2, 1, 16, 16), den.schedule.discretize(4), cond, sampler="mala",
                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert bool(torch.isfinite(xs).all())
