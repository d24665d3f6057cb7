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
