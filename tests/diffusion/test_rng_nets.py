"""Explicit RNG: member seeds, no global-state use; the MLP network and its null class."""

from __future__ import annotations

import pytest
import torch

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.rng import member_generators, member_seed, randn


def test_member_seeds_distinct_and_stable() -> None:
    seeds = {member_seed(1, m) for m in range(1000)}
    assert len(seeds) == 1000
    assert member_seed(1, 5) == member_seed(1, 5) != member_seed(2, 5)
    assert member_seed(1, 2, 3) != member_seed(1, 3, 2)
    with pytest.raises(ValueError, match="non-negative"):
        member_seed(-1)


def test_negative_keys_are_distinct_and_leave_the_others_unchanged() -> None:
    """An initial time before 1970 is a negative key (hours since the epoch): it gets its own
    seed, and the seeds of non-negative keys are those SeedSequence gives them directly."""
    import numpy as np

    direct = np.random.SeedSequence([3, 10, 0]).generate_state(2, dtype=np.uint32)
    assert member_seed(3, 10, 0) == ((int(direct[0]) << 31) ^ int(direct[1])) & ((1 << 63) - 1)
    keys = [-611256, -1, 0, 1, 611256]
    assert len({member_seed(3, k, 0) for k in keys}) == len(keys)


def test_randn_per_member_rows() -> None:
    rows = randn((3, 4), member_generators(0, 3))
    alone = randn((1, 4), member_generators(0, [1]))
    torch.testing.assert_close(rows[1:2], alone)


def test_library_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    net = build_seeded(lambda: MLPNet(2, 32, 2, num_classes=3), seed=4)
    randn((2, 2), None)
    d = Denoiser(net, Preconditioning("edm"))
    from stdiff.diffusion.samplers import sample
    from stdiff.diffusion.schedules import edm

    sample(d, (4, 2), edm().discretize(3), sampler="ddpm")
    assert torch.equal(state, torch.random.get_rng_state())
    again = build_seeded(lambda: MLPNet(2, 32, 2, num_classes=3), seed=4)
    for a, b in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mlp_null_class_and_shapes() -> None:
    net = build_seeded(lambda: MLPNet(6, 32, 2, num_classes=3), seed=0)
    x, c = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(4)
    labels = torch.tensor([0, 1, 2, 0])
    out = net(x, c, Condition(labels=labels))
    assert out.shape == (4, 2, 3)
    dropped = net(x, c, Condition(labels=labels, drop=torch.ones(4, dtype=torch.bool)))
    null = net(x, c, None)
    torch.testing.assert_close(dropped, null)
    assert not torch.allclose(out, null)
