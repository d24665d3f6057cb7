"""``loop.sharding: fsdp``: FSDP2 under ``torchrun`` (2 CPU processes, gloo) trains as DDP does,
resumes exactly, and writes checkpoints a single process reads; one process ignores the switch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stdiff.diffusion.energy import EnergyDenoiser
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import edm
from stdiff.pipelines.engine.checkpoint import latest_checkpoint, load_training_checkpoint
from stdiff.pipelines.engine.config import load_config
from stdiff.pipelines.engine.models import build_net
from stdiff.pipelines.engine.parallel import _block_methods, blocks, check_shardable, wrap
from stdiff.pipelines.engine.runner import TrainJobConfig, load_denoiser
from stdiff.pipelines.engine.train import LoopConfig, OptimConfig, train

# clipping at 0.05 is active at every step (the gradient norms are 0.1-1): a per-shard norm
# instead of the global one would change the updates; val, samples: collective EMA forwards
LOOP = {"steps": 4, "batch_size": 4, "log_every": 1, "checkpoint_every": 2, "progress": False,
        "val_every": 2, "val_batches": 1, "sample_every": 4}  # fmt: skip
OPTIM = {"lr": 3e-3, "warmup_steps": 1, "grad_clip": 0.05}


def _config(tmp_path: Path, store: Path, csdi_job) -> Path:
    """A 2-layer CSDI imputation job (two FSDP blocks, one with ``side_terms``)."""
    cfg = csdi_job(tmp_path / "run", store, {"channels": 8, "layers": 2}, optim=OPTIM, loop=LOOP)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(torchrun, port: int, config: Path, sharding: str, out: Path, *extra: str) -> None:
    torchrun(port, "-m", "stdiff", "train", "--config", str(config),
             "--set", f"loop.sharding={sharding}", "--set", f"out={out}", *extra)  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _files(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, ``weights/model.x``, ``optimizer/state.0.exp_avg``..."""
    return {f"{name}/{k}": v for name in ("weights", "optimizer")
            for k, v in load_file(str(ckpt / f"{name}.safetensors")).items()}  # fmt: skip


def test_fsdp_trains_as_ddp(tmp_path: Path, stay_store: Path, torchrun, csdi_job) -> None:
    """Same losses, gradient norms, validation scores, weights, EMA and optimizer state as DDP
    (to 1e-5; the gradient reductions differ in order), in the same checkpoint format."""
    config = _config(tmp_path, stay_store, csdi_job)
    _train(torchrun, 29581, config, "ddp", tmp_path / "ddp")
    _train(torchrun, 29582, config, "fsdp", tmp_path / "fsdp")
    ddp, fsdp = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "fsdp")
    assert [r["step"] for r in fsdp] == [1, 2, 3, 4] and "val_crps" in fsdp[-1]
    assert all(r["grad_norm"] > OPTIM["grad_clip"] for r in ddp)
    for a, b in zip(ddp, fsdp, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"samples_per_s"}:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    for step in ("step_000000002", "step_000000004"):
        a, b = (_files(tmp_path / run / "checkpoints" / step) for run in ("ddp", "fsdp"))
        assert a.keys() == b.keys() and any(k.startswith("weights/ema.") for k in a)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)
        state = [json.loads((tmp_path / r / "checkpoints" / step / "state.json").read_text())
                 for r in ("ddp", "fsdp")]  # fmt: skip
        assert state[0] == state[1]  # step, param groups, scheduler
    assert (tmp_path / "fsdp/samples/step_000000004.png").is_file()


def test_fsdp_resume_is_bitwise_and_loads_in_one_process(
    tmp_path: Path, stay_store: Path, torchrun, csdi_job
) -> None:
    """A run stopped after its step-2 checkpoint and resumed equals the uninterrupted run
    bit for bit (the full weights and optimizer state are saved exactly and re-sharded the
    same way); its checkpoint loads into an unsharded network and optimizer.

    The stop is simulated: the resumed run reads only its run folder, so a copy of the
    uninterrupted run cut back to its step-2 checkpoint (the metrics of steps 3-4 left in, as a
    killed run leaves them) is what a run killed after step 2 leaves behind."""
    config = _config(tmp_path, stay_store, csdi_job)
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(torchrun, 29583, config, "fsdp", full)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints/step_000000004")
    shutil.rmtree(cut / "samples")
    _train(torchrun, 29584, config, "fsdp", cut, "--resume", str(cut))
    for a, b in zip(_metrics(full), _metrics(cut), strict=True):  # steps 1-2 kept, 3-4 redone
        assert {**b, "samples_per_s": 0} == {**a, "samples_per_s": 0}
    a, b = (_files(run / "checkpoints/step_000000004") for run in (full, cut))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    denoiser, _, _ = load_denoiser(cut, "ema")  # one process, no process group
    saved = load_training_checkpoint(latest_checkpoint(cut))
    for k, v in denoiser.net.state_dict().items():
        assert torch.equal(v, saved["ema"][k]), k
    opt = torch.optim.AdamW(denoiser.parameters())
    opt.load_state_dict(saved["optimizer"])  # the plain optimizer's numbering and shapes
    assert opt.state[next(denoiser.parameters())]["step"] == 4


def test_sharding_switch_is_validated(tmp_path: Path, stay_store: Path, csdi_job) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(csdi_job(tmp_path / "run", stay_store, {"channels": 8})))
    with pytest.raises(ValueError, match=r"job\.yaml: loop\.sharding: 'zero' is not valid"):
        load_config(path, TrainJobConfig, {"loop.sharding": "zero"})
    assert load_config(path, TrainJobConfig, {"loop.sharding": "fsdp"}).loop.sharding == "fsdp"
    with pytest.raises(ValueError, match=r"loop\.sharding 'zero' is not valid"):
        LoopConfig(sharding="zero")  # type: ignore[arg-type]


def _mlp() -> Denoiser:
    return Denoiser(build_seeded(lambda: MLPNet(2, 32, 2), 5), Preconditioning("edm", 1.0))


def test_one_process_ignores_the_switch(tmp_path: Path) -> None:
    """Without a process group ``fsdp`` wraps nothing and trains bit for bit as ``ddp``."""
    den = _mlp()
    assert wrap(den, _mlp(), "fsdp", torch.device("cpu")) is den
    data = [{"x": t} for t in torch.randn(32, 2, generator=torch.Generator().manual_seed(1))]
    for sharding in ("ddp", "fsdp"):
        train(_mlp(), edm(), data, lambda b, g: (b["x"], None, None),
              loop=LoopConfig(steps=3, batch_size=4, progress=False, sharding=sharding),
              optim=OptimConfig(warmup_steps=1), run_dir=tmp_path / sharding, config={},
              seed=0, device=torch.device("cpu"))  # fmt: skip
    a, b = (_files(tmp_path / s / "checkpoints/step_000000003") for s in ("ddp", "fsdp"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shard_plan_and_refusals() -> None:
    """Blocks are the outermost ModuleList elements; CSDI's ``side_terms`` is found (it is
    called before the block's forward); energy models and the autoencoder objective are refused."""
    csdi = build_net("csdi", {"num_features": 4, "channels": 8, "layers": 3, "heads": 2}, 0)
    found = blocks(csdi)
    assert [type(b).__name__ for b in found] == ["ResidualBlock"] * 3
    dit = build_net("dit_custom", {"in_channels": 1, "depth": 2, "hidden": 32, "num_heads": 4}, 0)
    assert [type(b).__name__ for b in blocks(dit)] == ["DiTBlock"] * 2
    assert _block_methods(found[0]) == ["side_terms"]
    assert _block_methods(blocks(dit)[0]) == []
    check_shardable(_mlp(), "denoise")
    energy = EnergyDenoiser(_mlp().net, Preconditioning("edm", 1.0))
    for den, objective in ((energy, "denoise"), (_mlp(), "autoencoder")):
        with pytest.raises(ValueError, match=r"loop\.sharding: fsdp cannot train"):
            check_shardable(den, objective)
