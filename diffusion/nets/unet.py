"""The image baseline: a DDPM/IDDPM-style U-Net (Ho et al. 2020; Nichol & Dhariwal 2021).

Layout for ``channel_mult=(1, 2, 2)``, ``num_res_blocks=2`` (``ds`` = downsample factor)::

    conv_in -> [res, res, down](ds 1) -> [res, res, down](ds 2) -> [res+attn, res+attn](ds 4)
            -> middle: res, attn, res
            -> [3 x res+attn, up](ds 4) -> [3 x res, up](ds 2) -> [3 x res](ds 1) -> norm, SiLU, conv_out

Every encoder output (including ``conv_in``'s) is pushed on a stack and concatenated onto the
input of one decoder block (IDDPM's skip connections). Residual blocks are GroupNorm -> SiLU ->
conv, then the embedding (noise + class) modulates the second norm as ``norm(h) * (1 + scale) +
shift`` (IDDPM's ``use_scale_shift_norm``), then SiLU -> dropout -> conv. The last conv is
zero-initialised (and kept out of ``seeded_init``'s reach), so the initial output is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.embeddings import NoiseEmbedding


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, fewer when channels are few (at least 2 channels a group)."""
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class _ZeroConv2d(nn.Module):
    """A 3x3 conv whose weight and bias start at zero. Not an ``nn.Conv2d`` on purpose:
    ``diffusion.nets.init.seeded_init`` leaves it alone, so ``build_seeded`` keeps the zeros."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = rearrange(self.emb(F.silu(emb)), "b c -> b c 1 1").chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        q, k, v = rearrange(qkv, "b (three n d) x y -> three b n (x y) d", three=3, n=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = rearrange(out, "b n (x y) d -> b (n d) x y", x=h, y=w)  # (B, C, H, W)
        return x + self.proj(out)


class _Level(nn.Module):
    """One residual block, optionally followed by self-attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, attn: bool, hc: int):
        super().__init__()
        self.res = _ResBlock(cin, cout, emb_dim, dropout)
        self.attn = _Attention(cout, hc) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """``net(x_in (B, C, H, W), c_noise (B,), cond) -> (B, out_channels, H, W)``.

    Args:
      in_channels: image channels; ``out_channels`` defaults to the same.
      base_channels, channel_mult: width of level ``i`` is ``base_channels * channel_mult[i]``;
        level ``i`` runs at ``1 / 2**i`` of the input resolution.
      num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
      attention_resolutions: downsample factors (``2**i``) with self-attention after each
        residual block; ``None`` means the lowest resolution only. The middle always attends.
      dropout: before the second conv of each residual block.
      num_classes: with ``> 0``, ``cond.labels`` are embedded and added to the noise embedding;
        index ``num_classes`` is the null class, used where ``cond.drop`` is set or no labels are
        given (classifier-free guidance).
      context_channels: channels of ``cond.context`` ``(B, C_ctx, H, W)``, concatenated on the
        input channels (required when ``> 0``; ``cond.drop`` does not remove it).
      head_channels: channels per attention head (``max(1, C // head_channels)`` heads).
      noise_scale: ``NoiseEmbedding`` scale (100 for ``ln(sigma)/4``, 1 for integer timesteps).

    ``H`` and ``W`` need not be divisible by ``2**(len(channel_mult) - 1)``: the input is
    reflect-padded on the bottom/right up to the next multiple and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] | None = None,
        dropout: float = 0.1,
        num_classes: int = 0,
        context_channels: int = 0,
        head_channels: int = 64,
        noise_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.context_channels = context_channels
        self.factor = 2 ** (len(channel_mult) - 1)
        attn_ds = {self.factor} if attention_resolutions is None else set(attention_resolutions)
        emb_dim = 4 * base_channels
        self.noise = NoiseEmbedding(emb_dim, scale=noise_scale)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

        self.conv_in = nn.Conv2d(in_channels + context_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, ds = [base_channels], base_channels, 1
        for i, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                cout = base_channels * mult
                self.down.append(_Level(ch, cout, emb_dim, dropout, ds in attn_ds, head_channels))
                ch = cout
                skips.append(ch)
            if i < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                ds *= 2
        self.mid = nn.ModuleList(
            [
                _Level(ch, ch, emb_dim, dropout, True, head_channels),
                _Level(ch, ch, emb_dim, dropout, False, head_channels),
            ]
        )
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                cin, cout = ch + skips.pop(), base_channels * mult
                self.up.append(_Level(cin, cout, emb_dim, dropout, ds in attn_ds, head_channels))
                ch = cout
            if i > 0:
                self.up.append(_Upsample(ch))
                ds //= 2
        self.norm_out = _norm(ch)
        self.conv_out = _ZeroConv2d(ch, out_channels or in_channels)

    def _embedding(self, c_noise: Tensor, cond: Condition | None, b: int, dev) -> Tensor:
        emb = self.noise(c_noise)  # (B, emb_dim)
        if self.label is not None:
            labels = torch.full((b,), self.num_classes, dtype=torch.long, device=dev)
            if cond is not None and cond.labels is not None:
                keep = ~cond.drop_mask(b, dev)
                labels = labels.where(~keep, cond.labels.to(dev).long())
            emb = emb + self.label(labels)
        return emb.to(self.conv_in.weight.dtype)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Condition | None = None) -> Tensor:
        b, _, h, w = x.shape
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} channels, got {x.shape[1]}")
        emb = self._embedding(c_noise, cond, b, x.device)
        if self.context_channels > 0:
            if cond is None or cond.context is None:
                raise ValueError(f"UNet needs cond.context with {self.context_channels} channels")
            x = torch.cat([x, cond.context.to(x.dtype)], dim=1)  # (B, C + C_ctx, H, W)
        ph, pw = -h % self.factor, -w % self.factor
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size
            x = F.pad(x, (0, pw, 0, ph), mode=mode)  # (B, C', H + ph, W + pw)

        hid = self.conv_in(x)
        stack = [hid]
        for layer in self.down:
            hid = layer(hid, emb) if isinstance(layer, _Level) else layer(hid)
            stack.append(hid)
        for layer in self.mid:
            hid = layer(hid, emb)
        for layer in self.up:
            if isinstance(layer, _Level):
                hid = layer(torch.cat([hid, stack.pop()], dim=1), emb)
            else:
                hid = layer(hid)
        out = self.conv_out(F.silu(self.norm_out(hid)))  # (B, out_channels, H + ph, W + pw)
        return out[..., :h, :w]
