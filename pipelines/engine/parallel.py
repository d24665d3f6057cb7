"""Data parallelism for the training loop under ``torchrun``: DDP, or FSDP2 sharding.

``loop.sharding: ddp`` (the default) keeps a full copy of the model, its gradients and its
optimizer state on every process and all-reduces the gradients (``DistributedDataParallel``).
``loop.sharding: fsdp`` shards all three over the processes with PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``): each process keeps ``1/world`` of every tensor, and
each block's full parameters exist only while the block runs (all-gathered before its forward
and its backward, freed after; gradients are reduce-scattered). Both average the gradients of
the same global batch, so they train the same model up to float rounding (the reduction order
differs). With one process (``WORLD_SIZE == 1``) the model is not wrapped at all.

FSDP2 runs on the CPU with gloo in torch 2.14 (tested with 2 processes) and on CUDA with NCCL;
the device mesh is built for the training device, so a CPU run on a GPU machine stays on gloo.

Shard plan: every element of the network's outermost ``nn.ModuleList`` s (CSDI's residual
layers, DiT's transformer blocks, U-Net levels, MLP blocks) is one FSDP unit, then the root
(the denoiser: embeddings, heads, everything else). A block's public methods other than
``forward`` (CSDI's ``ResidualBlock.side_terms``, which its parent calls before the block's
forward) are registered as forward methods, so their parameters are gathered for them too (a
block whose forward called such a method of its own would have its parameters freed early: that
fails loudly, with a DTensor error). :func:`check_shardable` refuses what FSDP cannot train.

The EMA is sharded alongside, with the same plan: its update ``ema.lerp_(p, 1 - decay)`` is
elementwise, so it runs on the local shards without communication and gives exactly what DDP's
full copy gives for the same parameters, and a model that does not fit one device does not need
a full EMA copy on each. The price: the EMA's forward is collective, so validation and sample
dumps run on every process (rank 0 logs and writes; the others write into a throw-away folder).

Checkpoints keep the single-process format: :func:`full_state` gathers full, unsharded model,
EMA and optimizer states onto rank 0's CPU (``get_model_state_dict`` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``), with the
optimizer's parameters numbered as ``torch.optim.Optimizer.state_dict`` numbers them (rank 0
needs CPU memory for the full model, EMA and optimizer state, about four model sizes). Resume
loads the weights into the unsharded modules before sharding (as for DDP: every rank reads the
checkpoint, so across nodes the run folder must be on a shared filesystem) and the optimizer
state with ``set_optimizer_state_dict``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

Sharding = Literal["ddp", "fsdp"]


def world_size() -> int:
    """The process group's size; 1 outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def is_sharded(sharding: Sharding) -> bool:
    """Whether the model is sharded (``fsdp`` with more than one process)."""
    return sharding == "fsdp" and world_size() > 1


def check_shardable(denoiser: nn.Module, objective: str) -> None:
    """Refuse (``ValueError``) what FSDP is not known to train: the autoencoder objective (its
    loss now goes through the wrapped forward, which DDP averages, tested; under FSDP it is
    untested, so refused rather than trusted) and energy models (their
    forward differentiates through the network, a double backward FSDP2's hooks do not support:
    on the CPU it crashes the process)."""
    from stdiff.diffusion.energy import EnergyDenoiser

    if objective == "autoencoder":
        what = "loop.objective: autoencoder"
    elif isinstance(denoiser, EnergyDenoiser):
        what = "model.kind: energy"
    else:
        return
    raise ValueError(f"loop.sharding: fsdp cannot train {what}; use loop.sharding: ddp")


def wrap(
    denoiser: nn.Module, ema: nn.Module, sharding: Sharding, device: torch.device
) -> nn.Module:
    """The module whose forward the loop calls: ``denoiser`` itself with one process, DDP
    around it, or (``fsdp``) ``denoiser`` sharded in place, ``ema`` sharded the same way.
    Build the optimizer after this call (FSDP replaces the parameters by sharded ones)."""
    if world_size() == 1:
        return denoiser
    if sharding == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world_size(),))
        shard(denoiser, mesh)
        shard(ema, mesh)
        return denoiser
    return torch.nn.parallel.DistributedDataParallel(
        denoiser, device_ids=[device.index] if device.type == "cuda" else None
    )


def shard(module: nn.Module, mesh: Any) -> None:
    """``fully_shard`` each block of ``module`` (see the module docstring), then ``module``."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in blocks(module):
        methods = _block_methods(block)  # before fully_shard swaps the class for a subclass
        fully_shard(block, mesh=mesh)
        for name in methods:
            register_fsdp_forward_method(block, name)
    fully_shard(module, mesh=mesh)


def blocks(module: nn.Module) -> list[nn.Module]:
    """The elements (with parameters) of the outermost ``nn.ModuleList`` s under ``module``."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                found.extend(b for b in child if any(True for _ in b.parameters()))
            else:
                visit(child)

    visit(module)
    return found


def _block_methods(block: nn.Module) -> list[str]:
    """Public methods a block's class defines besides ``forward`` and ``nn.Module``'s own."""
    return [
        name
        for name, fn in vars(type(block)).items()
        if inspect.isfunction(fn)
        and not name.startswith("_")
        and not hasattr(nn.Module, name)
        and name not in ("forward", "reset_parameters")
    ]


class FullOptimizerState:
    """Stands in for the optimizer when writing a checkpoint: ``state_dict()`` returns the
    gathered full state, numbered as the unsharded optimizer's own ``state_dict`` numbers it."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def full_state(
    denoiser: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, sharding: Sharding
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
    """``(model, ema, optimizer)``: the networks' full state dicts (``denoiser.net``'s keys) and
    the optimizer (or a :class:`FullOptimizerState`) to checkpoint. Under FSDP this is a
    collective: every process calls it; rank 0 gets the tensors (on the CPU), the others empty
    dicts."""
    if not is_sharded(sharding):
        return denoiser.net.state_dict(), ema.net.state_dict(), opt
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model, averaged = (_net_keys(get_model_state_dict(m, options=options)) for m in (denoiser, ema))
    optim = get_optimizer_state_dict(denoiser, opt, options=options)
    if torch.distributed.get_rank() != 0:  # cpu_offload: the full tensors are on rank 0 only
        return model, averaged, FullOptimizerState({})
    ids = {name: i for i, (name, _) in enumerate(denoiser.named_parameters())}
    groups = [{**g, "params": [ids[n] for n in g["params"]]} for g in optim["param_groups"]]
    numbered = {ids[name]: st for name, st in optim["state"].items()}
    return model, averaged, FullOptimizerState({"state": numbered, "param_groups": groups})


def _net_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``net.*`` entries of a denoiser's state dict, keyed as ``denoiser.net.state_dict()``."""
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def load_optimizer(
    denoiser: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], sharding: Sharding
) -> None:
    """Load a full (checkpointed) optimizer state into ``opt``, sharding it under FSDP."""
    if not is_sharded(sharding):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [name for name, _ in denoiser.named_parameters()]
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    named = {"state": {names[i]: st for i, st in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(denoiser, opt, named, options=StateDictOptions(full_state_dict=True))
