"""The image U-Net: shapes with and without padding, zero start, null class, gradients, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.nets.unet import UNet
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import edm

DEFAULT_PARAMS_IN1 = 6_996_033  # UNet(in_channels=1): base 64, mult (1, 2, 2), 2 res blocks


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_zero_start_and_param_count() -> None:
    net = build_seeded(lambda: UNet(in_channels=1), seed=0).eval()
    assert sum(p.numel() for p in net.parameters()) == DEFAULT_PARAMS_IN1
    c = torch.randn(2, generator=_gen(1))
    with torch.no_grad():
        for size in (28, 30):  # 28 divides by 4; 30 is reflect-padded to 32 and cropped back
            x = torch.randn(2, 1, size, size, generator=_gen(size))
            out = net(x, c)
            assert out.shape == (2, 1, size, size)
            assert torch.equal(out, torch.zeros_like(out))  # zero-initialised last conv
        rect = net(torch.randn(1, 1, 13, 7, generator=_gen(2)), c[:1])
        assert rect.shape == (1, 1, 13, 7)


def _small(**kw) -> UNet:
    return UNet(in_channels=2, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, **kw)


def _perturb_out(net: UNet, seed: int) -> None:
    with torch.no_grad():
        net.conv_out.weight.copy_(
            0.1 * torch.randn(net.conv_out.weight.shape, generator=_gen(seed))
        )


def test_null_class_and_context() -> None:
    net = build_seeded(lambda: _small(num_classes=3, context_channels=1), seed=0).eval()
    _perturb_out(net, 1)
    x = torch.randn(4, 2, 12, 12, generator=_gen(2))
    ctx = torch.randn(4, 1, 12, 12, generator=_gen(3))
    c = torch.linspace(-1, 1, 4)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = net(x, c, Condition(labels=labels, context=ctx))
        dropped = net(x, c, Condition(labels=labels, context=ctx, drop=torch.ones(4, dtype=bool)))
        null = net(x, c, Condition(context=ctx))
        half = net(x, c, Condition(labels=labels, context=ctx, drop=torch.tensor([1, 0, 1, 0])))
        other_ctx = net(x, c, Condition(labels=labels, context=ctx.flip(0)))
    torch.testing.assert_close(dropped, null)
    assert not torch.allclose(out, null)
    torch.testing.assert_close(half[1::2], out[1::2])
    torch.testing.assert_close(half[0::2], null[0::2])
    assert not torch.allclose(out, other_ctx)


def test_gradient_reaches_every_parameter() -> None:
    net = build_seeded(lambda: _small(num_classes=3, context_channels=1), seed=0).eval()
    _perturb_out(net, 1)
    x = torch.randn(3, 2, 11, 11, generator=_gen(2))  # odd size: through the reflect padding
    ctx = torch.randn(3, 1, 11, 11, generator=_gen(3))
    cond = Condition(labels=torch.tensor([0, 1, 2]), context=ctx)
    net(x, torch.tensor([-0.5, 0.0, 0.5]), cond).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiny_unet_training_lowers_loss() -> None:
    net = build_seeded(
        lambda: UNet(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1),
        seed=0,
    )
    den = Denoiser(net, Preconditioning("edm", 0.5))
    sched = edm()
    # Smooth random images (4x4 noise upsampled): with i.i.d. pixels F = 0 would already be the
    # optimal denoiser, so only memorisation could lower the loss.
    low = torch.randn(16, 1, 4, 4, generator=_gen(1))
    x0 = F.interpolate(low, size=16, mode="bilinear", align_corners=False)
    x0 = 0.5 * x0 / x0.std()  # (16, 1, 16, 16) with std sigma_data

    def eval_loss() -> float:
        with torch.no_grad():
            net.eval()
            loss = denoising_loss(den, x0, sched, generator=_gen(99)).item()
            net.train()
            return loss

    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    gen = _gen(2)
    first = eval_loss()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG
        torch.manual_seed(0)
        for _ in range(80):
            opt.zero_grad()
            denoising_loss(den, x0, sched, generator=gen).backward()
            opt.step()
    last = eval_loss()
    print(f"tiny U-Net denoising loss: first {first:.4f} -> last {last:.4f}")
    assert last < 0.5 * first
