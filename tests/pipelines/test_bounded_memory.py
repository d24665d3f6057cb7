"""Jobs read a store lazily: imputing 4 stays of a store whose mask alone is 1 GB (fill-value
chunks, as in benchmarks/memory_scaling.py) stays far below what reading the mask whole costs.
Before the lazy reads, the job read the whole mask and copied it to booleans (2 GB more)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmarks.memory_scaling import K, L, make_store
from stdiff.cli import app

STAYS = 640_000  # observed_mask 1.08 GB, values 4.3 GB (logical)

# The child's own peak (VmHWM): ru_maxrss would include the pytest parent's pages, which a
# vfork-spawned child shares until it execs.
CHILD = """
import json, sys
from stdiff.cli import entry
sys.argv = ["stdiff", *sys.argv[1:]]
code = 0
try:
    entry()
except SystemExit as e:
    code = e.code or 0
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(json.dumps({"rc": code, "rss_gib": int(hwm.split()[1]) / 2**20}))
"""


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="peak memory is read from Linux's /proc"
)
def test_impute_does_not_read_the_store_whole(tmp_path: Path, csdi_job) -> None:
    small, big = tmp_path / "small.zarr", tmp_path / "big.zarr"
    make_store(small, 64, written=True)
    make_store(big, STAYS, written=False, flags=False)  # the split scans the mask, block-wise
    assert STAYS * L * K > 2**30
    cfg = csdi_job(tmp_path / "run", small, {"num_features": K, "channels": 8, "layers": 1},
                   loop={"steps": 2, "batch_size": 4, "checkpoint_every": 2, "progress": False})  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    args = ["impute", "--checkpoint", str(tmp_path / "run"), "--data", str(big), "--out",
            str(tmp_path / "imp.zarr"), "--steps", "2", "--members", "2", "--set",
            "max_stays=4", "--set", "eval_ratio=0.1", "--set", "clip_x0=false"]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0, out.stderr[-2000:]
    # torch and the model take about 0.9 GiB (1.03 GiB measured); reading the mask whole and
    # copying it to booleans would add 2 GiB
    assert got["rss_gib"] < 1.9, got
