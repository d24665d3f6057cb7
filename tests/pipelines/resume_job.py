"""A tiny training job run as a subprocess by test_train.py (killed with SIGKILL and resumed)."""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.utils.data import Dataset

from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import edm
from stdiff.pipelines.engine.train import LoopConfig, OptimConfig, train


class Points(Dataset):
    """64 fixed 2-D points; slow enough (3 ms per item) for the parent to kill mid-run."""

    def __init__(self, delay: float) -> None:
        self.x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        self.delay = delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return {"x": self.x[i]}


class DropNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Dropout(0.2), nn.Linear(32, 2))

    def forward(self, x, c_noise, cond):
        return self.f(torch.cat([x, c_noise[:, None]], dim=1))


def main(run_dir: str, resume: bool, delay: float) -> None:
    net = build_seeded(DropNet, 1)
    den = Denoiser(net, Preconditioning("edm", 1.0))
    loop = LoopConfig(
        steps=40, batch_size=8, checkpoint_every=5, log_every=5, progress=False, ema_decay=0.9
    )
    optim = OptimConfig(lr=1e-2, warmup_steps=5, grad_accum=2)
    train(
        den,
        edm(),
        Points(delay),
        lambda b, g: (b["x"], None, None),
        loop=loop,
        optim=optim,
        run_dir=run_dir,
        config={"job": "resume-test"},
        seed=3,
        device=torch.device("cpu"),
        resume=run_dir if resume else None,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3]))
