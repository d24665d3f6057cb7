"""DiT: registry, parameter counts, padding, adaLN-Zero init, null class, context, training."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.dit import (
    DIT_CONFIGS,
    DIT_NAMES,
    DiT,
    _ZeroLinear,
    make_dit,
    pad_to_patch,
    sincos_pos_embed_2d,
)
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import edm

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny(**kw) -> DiT:
    """The custom tiny config: depth 2, hidden 64, 4 heads, patch 2."""
    args = dict(patch_size=2, depth=2, hidden=64, num_heads=4) | kw
    return build_seeded(lambda: DiT(2, **args), seed=0)


@torch.no_grad()
def _randomise_zero_layers(net: DiT, seed: int) -> DiT:
    """Give the adaLN-Zero layers small random values so outputs depend on the inputs."""
    g = _gen(seed)
    for m in net.modules():
        if isinstance(m, _ZeroLinear):
            m.weight.copy_(0.05 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return net


def _n_params(net: DiT) -> int:
    return sum(p.numel() for p in net.parameters())


def test_registry_names_and_errors() -> None:
    assert len(DIT_NAMES) == 12
    for name in DIT_NAMES:
        with torch.device("meta"):
            net = make_dit(name, in_channels=4)
        depth, hidden, heads = DIT_CONFIGS[name.split("/")[0]]
        assert len(net.blocks) == depth and net.hidden == hidden
        assert net.blocks[0].attn.num_heads == heads
        assert net.patch_size == int(name.split("/")[1])
    for bad in ("B/3", "M/2", "B2", "b/2"):
        with pytest.raises(ValueError, match=r"choose one of .*'S/2'.*'XL/8'"):
            make_dit(bad, in_channels=4)


def test_parameter_counts() -> None:
    """32x32x4 latents (256px images). Paper: DiT-B/2 ~130M, DiT-XL/2 ~675M params (with 1000
    classes and learned sigma). Our timestep MLP is hidden->hidden (DiT: 256->hidden) and the
    position embedding is a buffer (DiT: a frozen Parameter); correcting both gives XL/2
    675,866,912 - 1152*(1152-256) + 256*1152 = 675,129,632, the official DiT-XL/2 count."""
    with torch.device("meta"):
        counts = {n: _n_params(make_dit(n, 4)) for n in ("S/2", "B/2", "XL/2")}
        paper = {
            n: _n_params(make_dit(n, 4, num_classes=1000, learn_sigma=True))
            for n in ("S/2", "B/2", "XL/2")
        }
    assert counts == {"S/2": 32_523_664, "B/2": 129_927_952, "XL/2": 674_695_312}
    assert paper == {"S/2": 32_914_208, "B/2": 130_709_024, "XL/2": 675_866_912}


def test_non_square_shapes_and_padding() -> None:
    x = torch.randn(2, 2, 20, 36, generator=_gen(1))
    for patch, size in ((4, (20, 36)), (8, (20, 36)), (4, (18, 35))):
        net = _randomise_zero_layers(_tiny(patch_size=patch), seed=2)
        xi = x[..., : size[0], : size[1]]
        out = net(xi, torch.zeros(2))
        assert out.shape == xi.shape
        assert out.abs().sum() > 0


def test_pos_embed_grid() -> None:
    pe = sincos_pos_embed_2d(64, 3, 5)  # (15, 64), row-major
    assert pe.shape == (15, 64)
    torch.testing.assert_close(pe[0, :32], pe[5, :32])  # same column -> same x half
    torch.testing.assert_close(pe[0, 32:], pe[1, 32:])  # same row -> same y half
    assert len({tuple(r.tolist()) for r in pe}) == 15


def test_initial_output_exactly_zero() -> None:
    net = build_seeded(
        lambda: DiT(3, patch_size=4, depth=2, hidden=64, num_heads=4, num_classes=5,
                    context_channels=2, num_scalars=2),
        seed=3,
    )  # fmt: skip
    g = _gen(4)
    cond = Condition(
        labels=torch.tensor([0, 4]),
        context=torch.randn(2, 2, 10, 13, generator=g),
        scalars=torch.tensor([[6.0, 1.0], [24.0, 0.0]]),
    )
    out = net(torch.randn(2, 3, 10, 13, generator=g), torch.tensor([-1.0, 0.5]), cond)
    assert out.shape == (2, 3, 10, 13)
    assert torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match=r"cond\.scalars"):
        net(torch.randn(2, 3, 10, 13, generator=g), torch.zeros(2), Condition())


def test_pad_periodic_wraps_and_reflects() -> None:
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    p = pad_to_patch(x, 4, periodic_lon=True)  # (1, 2, 8, 8)
    assert p.shape == (1, 2, 8, 8)
    torch.testing.assert_close(p[..., :5, :7], x)
    torch.testing.assert_close(p[..., :5, 7], x[..., :, 0])  # column W is column 0 (wrap)
    for k in range(3):  # rows H + k reflect row H - 2 - k
        torch.testing.assert_close(p[..., 5 + k, :7], x[..., 3 - k, :])
    r = pad_to_patch(x, 4, periodic_lon=False)
    torch.testing.assert_close(r[..., :5, 7], x[..., :, 5])  # reflect in x instead
    # padding commutes with a roll by a multiple of the patch only in the periodic case:
    x8 = torch.randn(1, 1, 6, 8, generator=_gen(5))
    rolled = pad_to_patch(torch.roll(x8, 4, dims=-1), 4, periodic_lon=True)
    torch.testing.assert_close(rolled, torch.roll(pad_to_patch(x8, 4, True), 4, dims=-1))
    assert pad_to_patch(x8, 4).shape == (1, 1, 8, 8)  # y padded only; x already a multiple
    torch.testing.assert_close(pad_to_patch(x8, 4), pad_to_patch(x8, 4, True))


def test_sides_shorter_than_their_padding_repeat_the_edge() -> None:
    """A 1x1 grid (one station, one image pixel) or a 2x3 regional grid under patch 2-8: the
    reflection cannot pad them (torch refused with a padding error that reached the user), so
    the edge repeats; a periodic side wraps as often as needed."""
    one = torch.randn(1, 2, 1, 1, generator=_gen(6))
    p = pad_to_patch(one, 2)
    assert p.shape == (1, 2, 2, 2) and (p == one).all()
    x = torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3)
    wrapped = pad_to_patch(x, 8, periodic_lon=True)
    assert wrapped.shape == (1, 1, 8, 8)
    torch.testing.assert_close(wrapped[0, 0, 0], torch.tensor([0.0, 1, 2, 0, 1, 2, 0, 1]))
    torch.testing.assert_close(wrapped[0, 0, 7], x[0, 0, 1, [0, 1, 2, 0, 1, 2, 0, 1]])
    edge = pad_to_patch(x, 4)
    torch.testing.assert_close(edge[0, 0, :2, 3], x[0, 0, :, 1])  # 1 < 3 columns: reflected
    torch.testing.assert_close(edge[0, 0, 3, :3], x[0, 0, 1])  # 2 rows padding 2: repeated
    for size, patch in (((1, 1), 2), ((2, 3), 4), ((7, 9), 8)):
        net = _randomise_zero_layers(_tiny(patch_size=patch), seed=2)
        xi = torch.randn(2, 2, *size, generator=_gen(7))
        assert net(xi, torch.zeros(2)).shape == xi.shape


def test_null_class_and_dropped_context() -> None:
    net = _randomise_zero_layers(_tiny(num_classes=3, context_channels=1), seed=6)
    g = _gen(7)
    x, c = torch.randn(4, 2, 8, 8, generator=g), torch.randn(4, generator=g)
    labels, ctx = torch.tensor([0, 1, 2, 0]), torch.randn(4, 1, 8, 8, generator=g)
    full = net(x, c, Condition(labels=labels, context=ctx))
    dropped = net(x, c, Condition(labels=labels, context=ctx, drop=torch.ones(4, dtype=bool)))
    torch.testing.assert_close(dropped, net(x, c, None))
    torch.testing.assert_close(dropped, net(x, c, Condition()))
    assert not torch.allclose(full, dropped)
    some = net(x, c, Condition(labels=labels, context=ctx, drop=torch.tensor([1, 0, 1, 0]).bool()))
    torch.testing.assert_close(some[1::2], full[1::2])
    torch.testing.assert_close(some[0::2], dropped[0::2])


def test_learn_sigma_checkpointing_and_fused_attention() -> None:
    assert _tiny(learn_sigma=True)(torch.zeros(1, 2, 6, 6), torch.zeros(1)).shape == (1, 4, 6, 6)
    net = _randomise_zero_layers(_tiny(), seed=8)
    assert all(b.attn.fused_attn for b in net.blocks)  # F.scaled_dot_product_attention path
    x = torch.randn(2, 2, 8, 8, generator=_gen(9))
    grads = []
    for ckpt in (False, True):
        net.grad_checkpointing = ckpt
        net.zero_grad()
        net(x, torch.zeros(2)).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def _train(net: DiT, x0: Tensor, cond: Condition | None, steps: int) -> list[float]:
    den = Denoiser(net, Preconditioning("edm", 0.5))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched, g, losses = edm(), _gen(10), []
    for _ in range(steps):
        loss = denoising_loss(den, x0, sched, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _eval_loss(net: DiT, x0: Tensor, cond: Condition | None = None) -> float:
    den = Denoiser(net, Preconditioning("edm", 0.5))
    with torch.no_grad():
        return sum(
            denoising_loss(den, x0, edm(), cond, generator=_gen(100 + i)).item() for i in range(4)
        )


def test_context_changes_output_after_training() -> None:
    g = _gen(11)
    net = _tiny(context_channels=1)
    x0, ctx = 0.5 * torch.randn(8, 2, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    _train(net, x0, Condition(context=ctx), steps=5)
    x, c = torch.randn(8, 2, 8, 8, generator=g), torch.zeros(8)
    a = net(x, c, Condition(context=ctx))
    b = net(x, c, Condition(context=torch.randn(8, 1, 8, 8, generator=g)))
    assert (a - b).abs().max() > 1e-4


def test_tiny_dit_training_lowers_loss() -> None:
    torch.manual_seed(0)  # only to prove the library leaves the global RNG alone
    state = torch.random.get_rng_state()
    g = _gen(12)
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 8), torch.linspace(0, 3, 8), indexing="ij")
    phase = torch.rand(16, 2, 1, 1, generator=g) * 6
    x0 = 0.5 * torch.sin(xx + yy * 0.5 + phase)  # (16, 2, 8, 8) smooth fixed batch
    net = _tiny()
    before = _eval_loss(net, x0)
    losses = _train(net, x0, None, steps=100)
    after = _eval_loss(net, x0)
    assert after < 0.7 * before, (before, after)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert torch.equal(state, torch.random.get_rng_state())
