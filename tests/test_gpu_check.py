"""`make gpu-check` runs end to end on the CPU with tiny shapes: every phase produces its figures
and the CUDA-only correctness checks pass (trivially on the CPU, for real on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gpu_check import main


@pytest.mark.slow
def test_gpu_check_tiny_on_the_cpu(tmp_path: Path, capsys) -> None:
    assert main(["--tiny", "--json", str(tmp_path / "gc.json")]) == 0
    r = json.loads((tmp_path / "gc.json").read_text())
    assert r["cuda"]["passed"] and r["cuda"]["dit_bf16_rel_err"] > 0
    assert [d["model"] for d in r["dit"]] == ["DiT-B/2 (tiny)", "DiT-XL/2 (tiny)"]
    assert all(d["samples_per_s"] > 0 and 0 < d["mfu"] for d in r["dit"])
    assert r["csdi"]["train_steps_per_s"] > 0 and r["csdi"]["ddpm_stays_per_min"] > 0
    assert r["forecast"]["seconds_per_member_step"] > 0
    assert "<!-- BEGIN gpu-check -->" in capsys.readouterr().out
