"""The training engine: exact resume after SIGKILL, checkpoints without pickle, LR schedule,
deterministic resumable batches, and DDP gradients equal to single-process gradients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stdiff.pipelines.engine.checkpoint import latest_checkpoint, load_torch_weights
from stdiff.pipelines.engine.train import OptimConfig, StepBatches, lr_factor

JOB = Path(__file__).with_name("resume_job.py")


def _run(run_dir: Path, mode: str, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(run_dir), mode, str(delay)], stderr=subprocess.PIPE
    )


def test_sigkill_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    ref = _run(tmp_path / "ref", "fresh", 0.0)
    assert ref.wait(120) == 0, ref.stderr.read().decode()
    killed = _run(tmp_path / "run", "fresh", 0.003)
    deadline = time.time() + 120
    while not (tmp_path / "run/checkpoints/step_000000010").exists():
        assert killed.poll() is None and time.time() < deadline, (
            "job ended before it could be killed"
        )
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name < "step_000000040", last
    resumed = _run(tmp_path / "run", "resume", 0.0)
    assert resumed.wait(120) == 0, resumed.stderr.read().decode()
    a = load_file(str(tmp_path / "ref/checkpoints/step_000000040/weights.safetensors"))
    b = load_file(str(tmp_path / "run/checkpoints/step_000000040/weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [
        int(ln.split('"step": ')[1].split(",")[0])
        for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_checkpoint_folder_has_no_pickle_and_refuses_code(tmp_path: Path) -> None:
    job = _run(tmp_path / "r", "fresh", 0.0)
    assert job.wait(120) == 0
    files = {p.name for p in (tmp_path / "r/checkpoints/step_000000040").iterdir()}
    assert files == {"weights.safetensors", "optimizer.safetensors", "state.json"}

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"w": torch.ones(2), "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: refused"):
        load_torch_weights(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch_weights(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_lr_schedule_and_batches() -> None:
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    full = iter(StepBatches(20, 4, seed=1))
    batches = [next(full) for _ in range(12)]
    resumed = iter(StepBatches(20, 4, seed=1, start=7))
    assert [next(resumed) for _ in range(5)] == batches[7:]
    assert sorted(i for b in batches[:5] for i in b) == list(range(20))  # one epoch: each once
    r0, r1 = (
        iter(StepBatches(20, 2, seed=1, rank=0, world=2)),
        iter(StepBatches(20, 2, seed=1, rank=1, world=2)),
    )
    g = iter(StepBatches(20, 4, seed=1))
    first = next(g)
    assert sorted(next(r0) + next(r1)) == sorted(first)


def test_ddp_gradients_equal_single_process(tmp_path: Path, torchrun) -> None:
    """2 CPU processes (gloo, torchrun): averaged DDP gradients of two half-batches equal the
    single-process gradients of the whole global batch; train() runs under DDP (rank-0 files)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_job", Path(__file__).with_name("ddp_job.py"))
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    torchrun(29571, str(Path(__file__).with_name("ddp_job.py")), str(tmp_path))
    ddp = load_file(str(tmp_path / "ddp_grads.safetensors"))
    den = job.model()
    job.loss_on(den, torch.arange(8)).backward()
    for name, p in den.named_parameters():
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-7)
    ae_ddp, holder = load_file(str(tmp_path / "ae_grads.safetensors")), job.autoencoder()
    job.ae_loss_on(holder, holder, torch.arange(8)).backward()  # the autoencoder objective too
    for name, p in holder.named_parameters():
        torch.testing.assert_close(ae_ddp[name], p.grad, rtol=1e-4, atol=1e-6)
    assert (tmp_path / "run/checkpoints/step_000000006/weights.safetensors").is_file()
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 2


def test_lr_schedules_match_their_definitions() -> None:
    # CSDI's MultiStepLR: x0.1 at 75 % and again at 90 % of the steps, no warm-up
    ms = OptimConfig(lr_schedule="multistep", warmup_steps=0)
    got = [ms.factor(s, 100) for s in (0, 74, 75, 89, 90, 99)]
    assert got == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert OptimConfig(lr_schedule="constant", warmup_steps=4).factor(1, 100) == 0.5
    assert OptimConfig(lr_schedule="constant", warmup_steps=4).factor(50, 100) == 1.0
    assert OptimConfig(warmup_steps=10).factor(100, 100) == pytest.approx(0.1)  # cosine end
    with pytest.raises(ValueError, match="lr_schedule"):
        OptimConfig(lr_schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="milestones"):
        OptimConfig(milestones=(75,))
