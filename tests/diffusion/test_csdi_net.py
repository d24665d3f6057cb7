"""CSDINet: shapes, zero start, parameter count, layout against a permute-based reference, mask and
drop semantics, the diffusion-step embedding, and a tiny end-to-end training run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.nets.csdi import CSDINet, EncoderLayer, attention, step_embedding
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.schedules import csdi_quad

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cond(b: int, l: int, k: int, seed: int) -> tuple[torch.Tensor, Condition]:
    g = _gen(seed)
    x = torch.randn(b, l, k, generator=g)
    mask = (torch.rand(b, l, k, generator=g) < 0.5).float()
    return x, Condition(observed=torch.randn(b, l, k, generator=g) * mask, mask=mask)


def _expected_params(k: int, c: int = 64, n: int = 4, t: int = 128, f: int = 16, s: int = 128):
    # attention in_proj + out_proj, feed-forward c->64->c, two LayerNorms
    trans = (3 * c * c + 3 * c) + (c * c + c) + (c * 64 + 64) + (64 * c + c) + 4 * c
    # diffusion projection, side (cond) projection, mid and output projections, two transformers
    block = (s * c + c) + ((t + f + 1) * 2 * c + 2 * c) + 2 * (c * 2 * c + 2 * c) + 2 * trans
    # feature embedding, step MLP, input projection, output projections 1 and 2
    top = k * f + 2 * (s * s + s) + (2 * c + c) + (c * c + c) + (c + 1)
    return top + n * block


def _randomise_output(net: CSDINet, seed: int) -> None:
    with torch.no_grad():
        net.output_projection2.weight.normal_(generator=_gen(seed))
        net.output_projection2.bias.normal_(generator=_gen(seed + 1))


def test_shape_zero_start_and_parameter_count() -> None:
    net = build_seeded(lambda: CSDINet(35), seed=0)
    x, cond = _cond(2, 48, 35, 1)
    out = net(x, torch.tensor([0.0, 49.0]), cond)
    assert out.shape == (2, 48, 35)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output projection
    n = sum(p.numel() for p in net.parameters())
    assert n == _expected_params(35) == 414_065  # official diff_CSDI 413_505 + 35 x 16 embedding
    small = CSDINet(5, channels=32, layers=2, heads=4, time_emb=32, feature_emb=8, step_emb=64)
    assert sum(p.numel() for p in small.parameters()) == _expected_params(5, 32, 2, 32, 8, 64)


def test_seeded_build_is_deterministic_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b = (build_seeded(lambda: CSDINet(4, channels=16, layers=1), seed=3) for _ in range(2))
    assert torch.equal(state, torch.random.get_rng_state())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def _torch_encoder(enc: nn.Module) -> nn.TransformerEncoder:
    """The official code's 1-layer ``nn.TransformerEncoder``, loaded from our encoder's state dict
    (strict: same names and shapes)."""
    layer = enc.layers[0]
    c = layer.norm1.normalized_shape[0]
    ref = nn.TransformerEncoderLayer(c, layer.heads, 64, activation="gelu", batch_first=True)
    ref = nn.TransformerEncoder(ref, num_layers=1, enable_nested_tensor=False)
    ref.load_state_dict(enc.state_dict())
    return ref.eval()


@torch.no_grad()
def _reference(net: CSDINet, x: torch.Tensor, step: torch.Tensor, cond: Condition):
    """CSDI's forward written with reshape/permute and PyTorch's transformer in the official
    (B, C, K, L) layout."""
    B, L, K = x.shape
    data, obs, m = (t.permute(0, 2, 1) for t in (x, cond.observed, cond.mask))  # (B, K, L)
    h = torch.stack([obs * m, (1 - m) * data], 1).reshape(B, 2, K * L)
    h = torch.relu(net.input_projection(h)).reshape(B, -1, K, L)
    C = h.shape[1]
    pos = torch.arange(L).float()[None].expand(B, L)[:, :, None]  # (B, L, 1)
    div = 1 / torch.pow(10000.0, torch.arange(0, 128, 2) / 128)
    pe = torch.zeros(B, L, 128)
    pe[:, :, 0::2], pe[:, :, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    fe = net.embed_layer(torch.arange(K))[None, None].expand(B, L, K, 16)
    side = torch.cat([pe[:, :, None].expand(B, L, K, 128), fe], -1).permute(0, 3, 2, 1)
    side = torch.cat([side, m[:, None]], 1).reshape(B, -1, K * L)  # (B, 145, K*L)
    emb = net.diffusion_embedding(step)
    skips = []
    for blk in net.residual_layers:
        y = h + blk.diffusion_projection(emb)[:, :, None, None]  # (B, C, K, L)
        y = _torch_encoder(blk.time_layer)(y.permute(0, 2, 3, 1).reshape(B * K, L, C))
        y = y.reshape(B, K, L, C).permute(0, 3, 1, 2)
        y = _torch_encoder(blk.feature_layer)(y.permute(0, 3, 2, 1).reshape(B * L, K, C))
        y = y.reshape(B, L, K, C).permute(0, 3, 2, 1).reshape(B, C, K * L)
        y = blk.mid_projection(y) + blk.cond_projection(side)
        y = blk.output_projection(torch.sigmoid(y[:, :C]) * torch.tanh(y[:, C:]))
        h = (h + y[:, :C].reshape(B, C, K, L)) / math.sqrt(2.0)
        skips.append(y[:, C:].reshape(B, C, K, L))
    s = (sum(skips) / math.sqrt(len(skips))).reshape(B, C, K * L)
    out = net.output_projection2(torch.relu(net.output_projection1(s)))
    return out.reshape(B, K, L).permute(0, 2, 1)  # (B, L, K)


def test_layout_matches_permute_reference() -> None:
    net = build_seeded(lambda: CSDINet(5, channels=16, layers=2, heads=4), seed=1).eval()
    _randomise_output(net, 5)
    x, cond = _cond(3, 7, 5, 2)
    step = torch.tensor([0.0, 17.0, 49.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, step, cond), _reference(net, x, step, cond))


def test_blocked_attention_matches_the_fused_kernel_with_gradients() -> None:
    g = _gen(11)
    # 64 x 64 weights with 4 heads: 64 sequences per block, so 150 sequences make 3 blocks
    q, k, v = (torch.randn(150, 4, 64, 8, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dim", [1, 2])
def test_encoder_layer_is_pytorchs_layer_along_any_axis(dim: int) -> None:
    """Forward and backward in training mode (dropout 0) against ``nn.TransformerEncoderLayer``
    run on the sequences moved to the front, with the same state dict."""
    ours = build_seeded(lambda: EncoderLayer(16, 4, dropout=0.0), seed=3).train()
    ref = nn.TransformerEncoderLayer(16, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 7, 16, generator=_gen(12), requires_grad=True)  # (B, K, L, C)
    out = ours(x, dim)
    seq = x.movedim(dim, -2)  # sequences along the axis ``dim``
    expect = ref(seq.reshape(-1, *seq.shape[-2:])).reshape(seq.shape).movedim(-2, dim)
    torch.testing.assert_close(out, expect)
    w = torch.randn(out.shape, generator=_gen(13))
    (gx,) = torch.autograd.grad((out * w).sum(), x, retain_graph=True)
    (rx,) = torch.autograd.grad((expect * w).sum(), x, retain_graph=True)
    torch.testing.assert_close(gx, rx)
    (out * w).sum().backward()
    (expect * w).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_dropout_acts_in_training_only() -> None:
    layer = build_seeded(lambda: EncoderLayer(16, 4, dropout=0.1), seed=4)
    x = torch.randn(2, 5, 7, 16, generator=_gen(14))
    with torch.no_grad():
        evals = [layer.eval()(x, 2) for _ in range(2)]
        with torch.random.fork_rng():
            torch.manual_seed(0)
            a = layer.train()(x, 2)
            torch.manual_seed(0)
            b = layer(x, 2)
            c = layer(x, 2)
    assert torch.equal(evals[0], evals[1]) and torch.equal(a, b)  # seeded: reproducible
    assert not torch.allclose(a, evals[0]) and not torch.allclose(a, c)


def _loss(net: nn.Module, x: torch.Tensor, cond: Condition, seed: int) -> torch.Tensor:
    d = Denoiser(net, Preconditioning("eps", 1.0, "timestep"), csdi_quad())
    return denoising_loss(d, x, csdi_quad(), cond, mask=1 - cond.mask, generator=_gen(seed))


def test_gradients_reach_every_parameter() -> None:
    net = build_seeded(lambda: CSDINet(5, channels=16, layers=2, heads=4), seed=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, cond = _cond(4, 8, 5, 3)
    _loss(net, x, cond, 0).backward()
    zero_out = {n for n, p in net.named_parameters() if not p.grad.abs().sum() > 0}
    assert zero_out == {n for n, _ in net.named_parameters()} - {
        "output_projection2.weight",
        "output_projection2.bias",
    }  # with a zero output layer only the output layer learns on the first step
    opt.step()
    opt.zero_grad()
    _loss(net, x, cond, 1).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_mask_conditions_the_output() -> None:
    net = build_seeded(lambda: CSDINet(5, channels=16, layers=2, heads=4), seed=4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, cond = _cond(4, 8, 5, 5)
    for i in range(3):
        opt.zero_grad()
        _loss(net, x, cond, i).backward()
        opt.step()
    net.eval()  # dropout (0.1, as the paper) off
    step = torch.full((4,), 10.0)
    with torch.no_grad():
        base = net(x, step, cond)
        noise = torch.randn(x.shape, generator=_gen(6))
        hidden = Condition(observed=cond.observed + noise * (1 - cond.mask), mask=cond.mask)
        shown = Condition(observed=cond.observed + noise * cond.mask, mask=cond.mask)
        assert base.abs().max() > 0
        assert torch.equal(net(x, step, hidden), base)  # unmasked observations never enter
        assert not torch.allclose(net(x, step, shown), base)  # masked ones do
        # the noisy target enters only where the mask is 0
        assert torch.equal(net(x + noise * cond.mask, step, cond), base)


def test_drop_is_the_null_condition() -> None:
    net = build_seeded(lambda: CSDINet(5, channels=16, layers=2, heads=4), seed=6).eval()
    _randomise_output(net, 7)
    x, cond = _cond(4, 8, 5, 8)
    step = torch.tensor([1.0, 2.0, 3.0, 4.0])
    drop = torch.tensor([True, False, True, False])
    zeros = torch.zeros_like(x)
    with torch.no_grad():
        dropped = net(x, step, Condition(observed=cond.observed, mask=cond.mask, drop=drop))
        null = net(x, step, Condition(observed=zeros, mask=zeros))
        kept = net(x, step, cond)
        torch.testing.assert_close(dropped[drop], null[drop], rtol=0, atol=0)
        torch.testing.assert_close(dropped[~drop], kept[~drop])
        torch.testing.assert_close(net(x, step, None), null, rtol=0, atol=0)
        torch.testing.assert_close(net(x, step, cond.dropped()), null, rtol=0, atol=0)


def test_step_embedding_matches_official_table_and_is_continuous() -> None:
    steps = torch.arange(50).unsqueeze(1)  # the official _build_embedding(50, 64.0)
    table = steps * 10.0 ** (torch.arange(64.0) / 63.0 * 4.0).unsqueeze(0)
    table = torch.cat([torch.sin(table), torch.cos(table)], dim=1)
    assert torch.equal(step_embedding(torch.arange(50.0)), table)
    assert torch.equal(step_embedding(torch.arange(50)), table)  # integer dtype too
    mid = step_embedding(torch.tensor([3.5]))
    assert not torch.allclose(mid, table[3:4]) and not torch.allclose(mid, table[4:5])
    near = step_embedding(torch.tensor([3.0 + 1e-6]))
    torch.testing.assert_close(near[:, :10], table[3:4, :10], atol=1e-4, rtol=0)  # low freqs


def _sinusoids(b: int, l: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    phase = torch.rand(b, 1, k, generator=g) * 2 * math.pi
    t = torch.arange(l, dtype=torch.float32)[None, :, None]
    x = torch.sin(2 * math.pi * t * torch.arange(1, k + 1)[None, None] / l + phase)  # (b, l, k)
    return x, (torch.rand(b, l, k, generator=g) < 0.5).float()


def test_tiny_end_to_end_training_lowers_the_loss() -> None:
    net = build_seeded(lambda: CSDINet(4, channels=32, layers=1, heads=4), seed=0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = _gen(10)
    xe, me = _sinusoids(64, 16, 4, _gen(99))
    ce = Condition(observed=xe * me, mask=me)
    sig = csdi_quad().sigmas_table[torch.arange(64) % 50].float()

    def evaluate() -> float:
        d = Denoiser(net, Preconditioning("eps", 1.0, "timestep"), csdi_quad())
        with torch.no_grad():
            loss = denoising_loss(d, xe, csdi_quad(), ce, mask=1 - me, generator=_gen(1), sigma=sig)
        return float(loss)

    before, losses = evaluate(), []
    for _ in range(150):
        x, m = _sinusoids(16, 16, 4, g)
        loss = _loss(
            net,
            x,
            Condition(observed=x * m, mask=m),
            int(torch.randint(1 << 30, (1,), generator=g)),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = evaluate()
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"train loss first10={first:.3f} last10={last:.3f}; held-out {before:.3f} -> {after:.3f}")
    assert after < 0.6 * before and last < first
