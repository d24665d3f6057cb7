"""Explicit random number generation: one ``torch.Generator`` per ensemble member.

Library code never touches global RNG state. A sampler's ``generator`` argument is either one
``torch.Generator`` (the whole batch from one stream) or a list with one generator per batch
element, so that member ``m`` of an ensemble gets the same numbers whatever batch it runs in
(the idea of NVlabs/edm's ``StackedRandomGenerator``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def member_seed(run_seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(run_seed, *keys)`` (e.g. init time, member) by SeedSequence.

    ``run_seed`` must be non-negative. A key may be negative (an initial time before 1970 in
    hours since the epoch): it is mapped to ``2**64 + |k|``, above every 64-bit key, so the
    non-negative keys keep their seeds and no two keys share one."""
    if run_seed < 0:
        raise ValueError(f"seeds must be non-negative integers, got {run_seed}")
    entropy = [run_seed, *(int(k) if k >= 0 else (1 << 64) - int(k) for k in keys)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def member_generators(
    run_seed: int, members: int | Sequence[int], *keys: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per member, seeded from ``(run_seed, *keys, member)``.

    ``members`` is a count (members ``0..n-1``) or explicit member indices.
    """
    ids = range(members) if isinstance(members, int) else members
    gens = []
    for m in ids:
        g = torch.Generator(device=device)
        g.manual_seed(member_seed(run_seed, *keys, int(m)))
        gens.append(g)
    return gens


def ensure_generator(generator: Generators) -> torch.Generator | Sequence[torch.Generator]:
    """``generator`` itself, or a fresh CPU generator seeded with 0 when it is None.

    Library code never falls back to torch's global generator: no seed means seed 0.
    """
    if generator is None:
        g = torch.Generator()
        g.manual_seed(0)
        return g
    return generator


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row ``i`` uses generator ``i``."""
    shape = tuple(shape)
    generator = ensure_generator(generator)
    if isinstance(generator, torch.Generator):  # draw where the generator lives, then move
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(
            device
        )
    if len(generator) != shape[0]:
        raise ValueError(
            f"generator: got {len(generator)} generators for a batch of {shape[0]}; "
            "pass one per batch element or a single torch.Generator"
        )
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    ).to(device)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """``randn`` with the shape, device and dtype of ``x``."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)
