"""stdiff owns one import name: it imports beside a top-level ``datasets`` package (a stand-in
for HuggingFace's, with its ``load_dataset``), and a non-editable install (a built wheel) works
from another folder with its shipped configs and the NCEP sample."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, pythonpath: Path, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_imports_beside_another_top_level_datasets(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def load_dataset(name):\n    return 'hf:' + name\n")
    (fake / "splits.py").write_text("class Split:\n    pass\n")  # HuggingFace has one too
    code = (
        "from datasets import load_dataset\n"
        "import stdiff.cli\n"
        "from stdiff.datasets.splits import csdi_stay_split\n"
        "import datasets\n"
        "assert load_dataset('x') == 'hf:x' and 'site' in datasets.__file__\n"
        "print('ok', stdiff.cli.__name__)\n"
    )
    res = _run([sys.executable, "-c", code], tmp_path, tmp_path / "site")
    assert res.returncode == 0 and "ok stdiff.cli" in res.stdout, res.stderr
    info = _run([sys.executable, "-m", "stdiff", "info"], tmp_path, tmp_path / "site")
    assert info.returncode == 0 and "samplers:" in info.stdout, info.stderr


@pytest.mark.slow
def test_wheel_installed_elsewhere_runs_the_quickstart(tmp_path: Path) -> None:
    # built from a copy: an in-tree build leaves build/ behind, whose stale modules a later
    # build of another layout would pack
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(
        ".*", "build", "outputs", "*.egg-info", "__pycache__", "benchmarks"
    )
    shutil.copytree(REPO, src, ignore=skip)
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr
    (whl,) = (tmp_path / "dist").glob("stdiff-*.whl")
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(whl)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (site / "stdiff/configs/serve.yaml").is_file()
    assert (site / "stdiff/datasets/samples/ncep_air_2013q1.nc").is_file()
    assert list(site.glob("stdiff-*.dist-info/licenses/LICENSE"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([sys.executable, "-c", "import stdiff.diffusion; print(stdiff.diffusion.__file__)"],
                 elsewhere, site)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    check = _run([sys.executable, "-m", "stdiff", "serve", "--check"], elsewhere, site)
    # the shipped serve.yaml is found and parsed; its inputs (trained models) do not exist here
    assert check.returncode == 2 and "forecast-00-12-utc" in check.stderr, check.stderr
    assert "outputs/train_ncep_dit" in check.stderr and "not found" in check.stderr
    qs = _run([sys.executable, "-m", "stdiff", "quickstart", "--out", "qs", "--steps", "2",
               "--members", "1"], elsewhere, site, timeout=600)  # fmt: skip
    assert qs.returncode == 0, qs.stdout[-2000:] + qs.stderr[-2000:]
    assert (elsewhere / "qs/REPORT.md").is_file()
