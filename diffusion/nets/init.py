"""Seeded initialisation: build networks without touching torch's global RNG.

``seeded_init(module, generator)`` re-draws every parameter from ``generator`` with PyTorch's
default rules (Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; Embedding:
N(0, 1); norms: ones and zeros). ``build_seeded(factory, seed)`` constructs under
``torch.random.fork_rng`` so the global state is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


@torch.no_grad()
def seeded_init(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``module``'s parameters in place from ``generator``; returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fan_in = m.weight[0].numel()
            bound = fan_in**-0.5
            m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2 * bound - bound)
            if m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
        elif isinstance(m, nn.LayerNorm | nn.GroupNorm) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
    return module


def build_seeded(factory: Callable[[], M], seed: int) -> M:
    """``factory()`` built without disturbing the global RNG, then initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        module = factory()
    return seeded_init(module, torch.Generator().manual_seed(seed))
