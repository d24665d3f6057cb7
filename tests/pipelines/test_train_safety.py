"""Training run folders: a second run on a held folder is refused naming the holder's PID, a cut
last line of ``metrics.jsonl`` does not block ``--resume``, and a fresh run that fails before its
first checkpoint leaves no folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from stdiff.cli import main


def _copy_run(trained_csdi, tmp_path: Path) -> tuple[Path, Path]:
    _store, run = trained_csdi
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    job = yaml.safe_load((run.parent / "job.yaml").read_text())
    job["out"] = str(copy)
    job["loop"]["steps"] = 64
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return copy, tmp_path / "job.yaml"


def test_held_run_folder_is_refused_naming_the_pid(trained_csdi, tmp_path: Path, capsys) -> None:
    run, job = _copy_run(trained_csdi, tmp_path)
    code = (
        "import time\nfrom stdiff.datasets.outputs import FolderLock\n"
        f"held = FolderLock({str(run)!r}, 'training run').acquire()\n"
        "print('held', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["train", "--config", str(job), "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"in use by process {p.pid}" in err and "--wait" in err
    finally:
        p.kill()
        p.wait()


def test_cut_last_metrics_line_does_not_block_resume(trained_csdi, tmp_path: Path) -> None:
    run, job = _copy_run(trained_csdi, tmp_path)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 61, "loss": 0.')  # a killed write
    assert main(["train", "--config", str(job), "--resume", str(run)]) == 0
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 64 and len(set(steps)) == len(steps)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_at_step_0(
    trained_csdi, tmp_path: Path
) -> None:
    run, job = _copy_run(trained_csdi, tmp_path)
    shutil.rmtree(run / "checkpoints")  # killed before the first checkpoint: metrics only
    assert main(["train", "--config", str(job), "--resume", str(run)]) == 0
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 64 and len(set(steps)) == len(steps)
    assert (run / "checkpoints").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    assert main(["train", "--config", str(job), "--resume", str(other)]) == 2  # not this run's


def test_fresh_run_failing_before_a_checkpoint_leaves_nothing(
    trained_csdi, tmp_path: Path, capsys
) -> None:
    _, job = _copy_run(trained_csdi, tmp_path)
    cfg = yaml.safe_load(job.read_text())
    cfg["out"] = str(tmp_path / "fresh")
    cfg["model"]["params"]["num_features"] = 7  # the store has 4
    job.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(job)]) == 2
    assert "model" in capsys.readouterr().err and not (tmp_path / "fresh").exists()


def test_overwrite_replaces_a_run_and_restores_it_on_failure(
    trained_csdi, tmp_path: Path, capsys
) -> None:
    run, job = _copy_run(trained_csdi, tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    cfg = yaml.safe_load(job.read_text())
    cfg["model"]["params"]["num_features"] = 7  # the new run fails before any checkpoint
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(bad), "--overwrite"]) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # restored
    cfg["model"]["params"]["num_features"] = 4
    cfg["loop"].update(steps=3, checkpoint_every=3, log_every=1)
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(bad), "--overwrite"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000000003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_step_too_large_for_memory_is_refused_naming_the_batch_size(
    trained_csdi, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The dry run measures what a step keeps for backward per sample; a batch whose step would
    not fit in the free memory is refused before any folder exists, with the batch that fits
    (a 1,200-column table under CSDI's feature attention was killed mid-step before)."""
    import stdiff.pipelines.engine.memory as memory

    _, job = _copy_run(trained_csdi, tmp_path)
    cfg = yaml.safe_load(job.read_text())
    cfg["out"] = str(tmp_path / "fresh")
    job.write_text(yaml.safe_dump(cfg))
    seen = {}
    check = memory.check_step_memory

    def measured(per_item, batch_size, module, device):
        seen["per_item"] = per_item
        seen["state"] = memory.STATE_COPIES * sum(p.nbytes for p in module.parameters())
        return check(per_item, batch_size, module, device)

    monkeypatch.setattr("stdiff.pipelines.engine.train.check_step_memory", measured)
    assert main(["train", "--config", str(job), "--set", "loop.steps=1"]) == 0
    per_sample = memory.STEP_OVERHEAD * seen["per_item"]
    assert seen["per_item"] > 0
    room = seen["state"] + int(5.5 * per_sample)  # room for the optimizer state and 5 samples
    monkeypatch.setattr(memory, "free_memory", lambda device: room)
    capsys.readouterr()
    assert main(["train", "--config", str(job), "--set", f"out={tmp_path / 'big'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loop.batch_size=16" in err and "at most 5" in err, err
    assert not (tmp_path / "big").exists()


def test_saved_activations_count_what_backward_keeps_without_the_weights() -> None:
    import torch

    from stdiff.pipelines.engine.memory import SavedActivations

    lin = torch.nn.Linear(256, 256, bias=False)
    x = torch.randn(64, 256)
    with SavedActivations(lin) as saved:
        y = torch.tanh(lin(x))  # linear keeps x (64 kB), tanh its output (64 kB); not the weight
    assert saved.nbytes == 2 * 64 * 256 * 4 and y.requires_grad


def test_allocation_limit_turns_an_impossible_allocation_into_an_error(monkeypatch) -> None:
    import resource

    import pytest
    import torch

    import stdiff.pipelines.engine.memory as memory

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    before = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setattr(memory, "free_memory", lambda device: 256 * 2**20)
    with pytest.raises((RuntimeError, MemoryError)) as err:
        with memory.allocation_limit(torch.device("cpu")):
            torch.empty(2**31, dtype=torch.uint8)  # 2 GiB of address space: refused, not touched
    assert memory.is_allocation_error(err.value)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
