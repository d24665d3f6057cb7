"""DiT: a diffusion transformer with adaLN-Zero blocks (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers").

``net(x_in (B, C, H, W), c_noise (B,), cond) -> (B, C, H, W)`` (``2C`` channels with
``learn_sigma``). The image is patchified by a strided convolution (timm ``PatchEmbed``), a fixed
2-D sin-cos position embedding is added, and each block modulates its LayerNorms with a
shift/scale and gates its residual branches with values regressed from the conditioning vector

    c = NoiseEmbedding(c_noise) + label embedding + sum_k ScalarEmbedding_k(scalars[:, k]).

The modulation and output projections start at zero (adaLN-Zero), so a fresh network outputs
exactly zero; they are ``_ZeroLinear`` modules, not ``nn.Linear``, so that
``diffusion.nets.init.seeded_init`` / ``build_seeded`` (which re-draw every ``nn.Linear``) keep
them at zero. Other layers follow the PyTorch defaults of ``seeded_init`` rather than DiT's
xavier/N(0, 0.02) scheme.

Weather-style extensions: ``cond.context`` is concatenated to the input channels (zeros where
``cond.drop``), inputs whose sides are not patch multiples are padded (reflect in y; circular in
x when ``periodic_lon``) and the output is cropped back, and the position embedding is computed
for the (padded, possibly non-square) token grid.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.embeddings import NoiseEmbedding

#: size name -> (depth, hidden, heads), the DiT paper's Table 1.
DIT_CONFIGS: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
DIT_PATCH_SIZES: tuple[int, ...] = (2, 4, 8)
DIT_NAMES: tuple[str, ...] = tuple(f"{s}/{p}" for s in DIT_CONFIGS for p in DIT_PATCH_SIZES)


def pad_to_patch(x: Tensor, patch: int, periodic_lon: bool = False) -> Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right to multiples of ``patch``: reflect in y (H);
    circular in x (W) when ``periodic_lon`` (column ``W + j`` is column ``j mod W``), else
    reflect. A side shorter than its padding (a 1x1 or 2x3 grid under patch 2 or 4), which
    reflection cannot pad, repeats its edge instead."""
    h, w = x.shape[-2:]
    ph, pw = -h % patch, -w % patch
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < h else "replicate")  # (B, C, H', W)
    if pw and periodic_lon:
        x = x[..., torch.arange(w + pw, device=x.device) % w]  # (B, C, H', W')
    elif pw:
        x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < w else "replicate")  # (B, C, H', W')
    return x


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed ``(grid_h * grid_w, dim)`` embedding, tokens row-major; the first half of the
    channels encodes the column (x) index and the second half the row (y) index, as in MAE/DiT."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # (gh, gw)
    omega = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (D/4,)
    parts = []
    for pos in (xs.flatten(), ys.flatten()):  # (N,)
        args = pos.double()[:, None] * omega[None]  # (N, D/4)
        parts += [torch.sin(args), torch.cos(args)]
    return torch.cat(parts, dim=1).float()  # (N, D)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x (B, N, D) * (1 + scale (B, D)) + shift (B, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


class _ZeroLinear(nn.Module):
    """A linear layer initialised to zero (weight and bias); not an ``nn.Linear`` on purpose, so
    generic re-initialisers leave it at zero (adaLN-Zero)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero: shift/scale/gate for attention and MLP."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)  # fused: F.sdpa
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        gelu = partial(nn.GELU, approximate="tanh")
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=gelu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _ZeroLinear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        mod = self.adaLN_modulation(c).chunk(6, dim=-1)  # 6 x (B, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, N, D)
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised projection to ``patch^2 * out`` values."""

    def __init__(self, hidden: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _ZeroLinear(hidden, 2 * hidden))
        self.linear = _ZeroLinear(hidden, patch * patch * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*out)


class DiT(nn.Module):
    """Diffusion transformer ``net(x_in (B, C, H, W), c_noise (B,), cond) -> (B, C_out, H, W)``.

    Args:
      in_channels: channels ``C`` of ``x_in``; the output has ``C`` (``2C`` with ``learn_sigma``).
      patch_size, depth, hidden, num_heads, mlp_ratio: the transformer (see ``DIT_CONFIGS``).
      num_classes: with ``> 0``, ``cond.labels`` are embedded; index ``num_classes`` is the null
        class, used where ``cond.drop`` is True or labels are absent.
      context_channels: channels of ``cond.context`` concatenated to ``x_in`` (zeros where
        ``cond.drop`` is True or the context is absent).
      num_scalars: width ``S`` of ``cond.scalars`` (required when ``> 0``); each scalar gets
        sinusoidal features of ``scalar * scalar_scale`` and its own MLP. Scalars are not dropped
        by ``cond.drop`` (a lead time stays known to the unconditional model).
      periodic_lon: pad x circularly instead of by reflection; only for grids that go all the
        way round in longitude (the weather task sets it from the grid's coordinates,
        ``pipelines.tasks.forecast.WeatherLayout.net_params``); a regional grid must not be
        padded with its opposite edge.
      grad_checkpointing: recompute each block in the backward pass while training.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        patch_size: int = 2,
        depth: int = 12,
        hidden: int = 384,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        context_channels: int = 0,
        num_scalars: int = 0,
        scalar_scale: float = 1.0,
        learn_sigma: bool = False,
        periodic_lon: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if hidden % 4 or hidden % num_heads:
            raise ValueError(f"hidden={hidden} must be divisible by 4 and num_heads={num_heads}")
        self.in_channels, self.context_channels = in_channels, context_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size, self.hidden, self.num_classes = patch_size, hidden, num_classes
        self.num_scalars, self.periodic_lon = num_scalars, periodic_lon
        self.grad_checkpointing = grad_checkpointing
        self.x_embedder = PatchEmbed(
            img_size=None,
            patch_size=patch_size,
            in_chans=in_channels + context_channels,
            embed_dim=hidden,
            strict_img_size=False,
        )
        self.t_embedder = NoiseEmbedding(hidden)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.s_embedders = nn.ModuleList(
            NoiseEmbedding(hidden, scale=scalar_scale) for _ in range(num_scalars)
        )
        self.blocks = nn.ModuleList(DiTBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size, self.out_channels)
        self._pos_cache: dict[tuple, Tensor] = {}

    def pos_embed(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        key = (grid_h, grid_w, like.device, like.dtype)
        if key not in self._pos_cache:
            pe = sincos_pos_embed_2d(self.hidden, grid_h, grid_w)  # (N, D)
            self._pos_cache[key] = pe.to(device=like.device, dtype=like.dtype)
        return self._pos_cache[key]

    def conditioning(self, c_noise: Tensor, cond: Condition | None, drop: Tensor) -> Tensor:
        """The ``(B, hidden)`` vector that drives every adaLN modulation."""
        c = self.t_embedder(c_noise)  # (B, D)
        if self.y_embedder is not None:
            labels = torch.full_like(drop, self.num_classes, dtype=torch.long)  # (B,) null
            if cond is not None and cond.labels is not None:
                labels = torch.where(drop, labels, cond.labels.long())  # (B,)
            c = c + self.y_embedder(labels)  # (B, D)
        if self.num_scalars:
            s = None if cond is None else cond.scalars
            if s is None or s.shape != (c.shape[0], self.num_scalars):
                got = None if s is None else tuple(s.shape)
                raise ValueError(
                    f"DiT needs cond.scalars of shape ({c.shape[0]}, {self.num_scalars}), got {got}"
                )
            for k, emb in enumerate(self.s_embedders):
                c = c + emb(s[:, k])  # (B, D)
        return c

    def forward(self, x: Tensor, c_noise: Tensor, cond: Condition | None = None) -> Tensor:
        b, _, h, w = x.shape
        p = self.patch_size
        drop = (cond or Condition()).drop_mask(b, x.device)  # (B,)
        if self.context_channels:
            ctx = None if cond is None else cond.context
            if ctx is None:
                ctx = x.new_zeros(b, self.context_channels, h, w)  # (B, C_ctx, H, W)
            ctx = ctx.to(x.dtype).masked_fill(drop[:, None, None, None], 0.0)  # (B, C_ctx, H, W)
            x = torch.cat([x, ctx], dim=1)  # (B, C + C_ctx, H, W)
        x = pad_to_patch(x, p, self.periodic_lon)  # (B, C_in, H', W'), H' = gh * p, W' = gw * p
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        t = self.x_embedder(x)  # (B, gh * gw, D)
        t = t + self.pos_embed(gh, gw, t)[None]  # (B, N, D)
        c = self.conditioning(c_noise, cond, drop).to(t.dtype)  # (B, D)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                t = checkpoint(block, t, c, use_reentrant=False)  # (B, N, D)
            else:
                t = block(t, c)  # (B, N, D)
        out = self.final_layer(t, c)  # (B, N, p * p * C_out)
        out = rearrange(
            out, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=p, q=p
        )  # (B,C,H',W')
        return out[..., :h, :w]  # (B, C_out, H, W)


def parse_dit_name(name: str) -> tuple[int, int, int, int]:
    """``"B/2"`` -> ``(depth, hidden, heads, patch)``; ValueError listing ``DIT_NAMES``."""
    if name not in DIT_NAMES:
        raise ValueError(f"unknown DiT model {name!r}; choose one of {list(DIT_NAMES)}")
    size, patch = name.split("/")
    return (*DIT_CONFIGS[size], int(patch))


def make_dit(name: str, in_channels: int, **kwargs) -> DiT:
    """A registry DiT, e.g. ``make_dit("B/2", in_channels=4, num_classes=1000)``; ``kwargs`` go to
    ``DiT`` (not the size fields)."""
    depth, hidden, heads, patch = parse_dit_name(name)
    return DiT(in_channels, patch_size=patch, depth=depth, hidden=hidden, num_heads=heads, **kwargs)
