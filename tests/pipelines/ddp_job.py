"""Run under torchrun with 2 CPU processes (gloo) by test_train.py.

1. DDP gradients of a half-batch per rank are saved by rank 0 (to compare with one process),
   for a denoiser and for the autoencoder objective's loss (``loop.objective: autoencoder``).
2. A short ``pipelines.engine.train.train`` run under DDP writes rank-0 checkpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import edm
from stdiff.pipelines.engine.train import LoopConfig, OptimConfig, train


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    sigma = torch.exp(torch.randn(8, generator=g))
    return x0, noise, sigma


def loss_on(den: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    x0, noise, sigma = (t[idx] for t in global_batch())
    return ((den(x0 + sigma[:, None] * noise, sigma) - x0) ** 2).mean()


def model() -> Denoiser:
    return Denoiser(build_seeded(lambda: MLPNet(2, 32, 2), 5), Preconditioning("edm", 1.0))


def autoencoder():
    from stdiff.diffusion.autoencoder import KLAutoencoder
    from stdiff.pipelines.engine.latent import AutoencoderHolder

    return AutoencoderHolder(
        build_seeded(lambda: KLAutoencoder(1, 2, channels=8, channel_mult=(1, 2)), 6)
    )


def ae_loss_on(forward, holder, idx: torch.Tensor) -> torch.Tensor:
    """The autoencoder objective's loss of images ``idx`` of a fixed batch of 8, each drawing
    its posterior sample from its own generator (so a half-batch draws what the whole does)."""
    from stdiff.pipelines.engine.latent import autoencoder_loss_fn

    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))[idx]
    gens = [torch.Generator().manual_seed(100 + int(i)) for i in idx]
    return autoencoder_loss_fn(1e-3)(forward, holder, x, None, None, gens)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    den = model()
    ddp = torch.nn.parallel.DistributedDataParallel(den)
    loss_on(ddp, torch.arange(8)[rank::world]).backward()
    if rank == 0:
        save_file(
            {n: p.grad.contiguous() for n, p in den.named_parameters()},
            str(Path(out) / "ddp_grads.safetensors"),
        )
    holder = autoencoder()
    ae_ddp = torch.nn.parallel.DistributedDataParallel(holder)  # alive until backward is done
    ae_loss_on(ae_ddp, holder, torch.arange(8)[rank::world]).backward()
    if rank == 0:
        save_file(
            {n: p.grad.contiguous() for n, p in holder.named_parameters()},
            str(Path(out) / "ae_grads.safetensors"),
        )
    data = [{"x": t} for t in torch.randn(64, 2, generator=torch.Generator().manual_seed(1))]
    train(
        model(),
        edm(),
        data,
        lambda b, g: (b["x"], None, None),
        loop=LoopConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=3, progress=False),
        optim=OptimConfig(warmup_steps=2),
        run_dir=Path(out) / "run",
        config={},
        seed=0,
        device=torch.device("cpu"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
