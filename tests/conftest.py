"""Shared fixtures: exact Gaussian and Gaussian-mixture data, and the real-data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion.analytic import GaussianMixture

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def gaussian() -> GaussianMixture:
    """N(mu, S) in 2-D with correlated, unequal variances."""
    return GaussianMixture(
        torch.tensor([[1.0, -0.5]]), torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
    )


@pytest.fixture
def mixture() -> GaussianMixture:
    """A 3-component 2-D mixture with unequal weights and anisotropic covariances."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]])
    covs = torch.tensor(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.1]]],
        dtype=torch.float64,
    )
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder beside the project; tests that need it skip with a reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only on development machines)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny network ops run several times faster with one intra-op thread on a shared 2-core
    machine; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def torchrun():
    """Run ``torchrun --nproc_per_node 2 --master_port PORT ARGS...`` on the CPU (gloo); returns
    the CompletedProcess after asserting it succeeded."""
    import os
    import subprocess
    import sys

    def run(port: int, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_port", str(port), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    return run
