"""CSDI's denoiser (Tashiro et al. 2021): residual layers of temporal + feature transformers.

The layout follows the official code (ermongroup/CSDI, ``diff_models.py`` / ``main_model.py``):
the input is 2 channels (conditional observations and the noisy target), every residual layer
adds the projected diffusion-step embedding, runs a 1-layer transformer over time ``L`` then one
over features ``K``, adds the projected side information (time embedding | feature embedding |
conditional mask) and applies the gated activation; the skips are summed and scaled by
1/sqrt(layers) and go through a two-layer output projection whose last layer starts at zero.

At the interface a sample is ``(B, L, K)`` (time, feature); inside it is CSDI's ``(B, C, K, L)``.
Module names match the official state dict (``diffmodel.`` prefix removed, ``embed_layer`` kept),
and the side-information time embedding is interleaved sin/cos like ``time_embedding`` there.

Deviations: ``output_projection2``'s bias is zero-initialised too (the official code zeros the
weight only) so the initial output is exactly 0; transformer dropout is 0.1 as the official code
(PyTorch's default there); it draws from torch's default generator, which the trainer re-seeds per
step inside ``fork_rng`` so runs stay reproducible, and it is off in ``eval()`` mode; attention input
projections are drawn from a fixed generator, since ``build_seeded`` redraws Linear layers only.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from diffusion.conditioning import Condition
from diffusion.nets.embeddings import sinusoidal_embedding


def step_embedding(step: Tensor, dim: int = 128) -> Tensor:
    """CSDI's diffusion-step features ``(B,) -> (B, dim)`` evaluated at float steps.

    Frequencies ``10^(4 i / (dim/2 - 1))``, ``[sin | cos]``; at integer steps this is bit-equal to
    the official ``DiffusionEmbedding._build_embedding`` table (same float32 operations).
    """
    half = dim // 2
    freqs = 10.0 ** (torch.arange(half, dtype=torch.float32, device=step.device) / (half - 1) * 4.0)
    args = step.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


class DiffusionEmbedding(nn.Module):
    """Step ``(B,)`` -> ``(B, dim)``: sinusoidal features, then Linear-SiLU-Linear-SiLU."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.projection1 = nn.Linear(dim, dim)
        self.projection2 = nn.Linear(dim, dim)

    def forward(self, step: Tensor) -> Tensor:
        h = F.silu(self.projection1(step_embedding(step, self.dim)))  # (B, dim)
        return F.silu(self.projection2(h))  # (B, dim)


class ZeroConv1x1(nn.Module):
    """A kernel-1 ``Conv1d`` starting at zero; not an ``nn.Conv1d``, so ``seeded_init`` keeps it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias)


def _transformer(channels: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        channels, heads, dim_feedforward=64, dropout=dropout, activation="gelu", batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)


class ResidualBlock(nn.Module):
    def __init__(self, side_dim: int, channels: int, step_dim: int, heads: int, dropout: float):
        super().__init__()
        self.diffusion_projection = nn.Linear(step_dim, channels)
        self.cond_projection = nn.Conv1d(side_dim, 2 * channels, 1)
        self.mid_projection = nn.Conv1d(channels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)
        self.time_layer = _transformer(channels, heads, dropout)
        self.feature_layer = _transformer(channels, heads, dropout)

    def forward(self, x: Tensor, side: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        B, _, K, L = x.shape  # x: (B, C, K, L), side: (B, S, K, L), emb: (B, step_dim)
        y = x + self.diffusion_projection(emb)[:, :, None, None]  # (B, C, K, L)
        if L > 1:
            t = rearrange(y, "b c k l -> (b k) l c")  # (B*K, L, C)
            y = rearrange(self.time_layer(t), "(b k) l c -> b c k l", b=B)  # (B, C, K, L)
        if K > 1:
            f = rearrange(y, "b c k l -> (b l) k c")  # (B*L, K, C)
            y = rearrange(self.feature_layer(f), "(b l) k c -> b c k l", b=B)  # (B, C, K, L)
        y = self.mid_projection(rearrange(y, "b c k l -> b c (k l)"))  # (B, 2C, K*L)
        y = y + self.cond_projection(rearrange(side, "b s k l -> b s (k l)"))  # (B, 2C, K*L)
        gate, filt = y.chunk(2, dim=1)  # (B, C, K*L) each
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))  # (B, 2C, K*L)
        residual, skip = (rearrange(z, "b c (k l) -> b c k l", k=K) for z in y.chunk(2, dim=1))
        return (x + residual) / math.sqrt(2.0), skip  # (B, C, K, L) each


class CSDINet(nn.Module):
    """``net(x_in (B, L, K), c_noise (B,), cond) -> (B, L, K)``, CSDI's eps network.

    ``c_noise`` is the diffusion step (fractional allowed), as from
    ``Preconditioning("eps", 1.0, "timestep")`` with ``csdi_quad()``. ``cond.observed`` and
    ``cond.mask`` ``(B, L, K)`` are the conditional observations and mask (both or neither; neither
    means nothing observed); where ``cond.drop`` is set they are zeroed (the CFG null).
    ``cond.scalars`` ``(B, L)`` are the time points (hours), ``arange(L)`` by default.

    Args:
      num_features: K. channels, layers, heads: residual width, depth and attention heads.
      time_emb, feature_emb, step_emb: sizes of the time, feature and diffusion-step embeddings.
      dropout: transformer dropout (official code: 0.1).
    """

    def __init__(
        self,
        num_features: int,
        channels: int = 64,
        layers: int = 4,
        heads: int = 8,
        time_emb: int = 128,
        feature_emb: int = 16,
        step_emb: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_features, self.channels, self.time_emb = num_features, channels, time_emb
        side_dim = time_emb + feature_emb + 1
        self.embed_layer = nn.Embedding(num_features, feature_emb)
        self.diffusion_embedding = DiffusionEmbedding(step_emb)
        self.input_projection = nn.Conv1d(2, channels, 1)
        self.residual_layers = nn.ModuleList(
            ResidualBlock(side_dim, channels, step_emb, heads, dropout) for _ in range(layers)
        )
        self.output_projection1 = nn.Conv1d(channels, channels, 1)
        self.output_projection2 = ZeroConv1x1(channels, 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.MultiheadAttention):  # xavier_uniform, as PyTorch's default
                    w = m.in_proj_weight
                    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                    w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * bound)

    def _inputs(self, x: Tensor, cond: Condition | None) -> tuple[Tensor, Tensor, Tensor]:
        B, L, K = x.shape
        obs, mask = (None, None) if cond is None else (cond.observed, cond.mask)
        if (obs is None) != (mask is None):
            raise ValueError("CSDINet: cond.observed and cond.mask must be given together")
        if obs is None or mask is None:
            obs = mask = x.new_zeros(B, L, K)
        obs, mask = obs.to(x.dtype), mask.to(x.dtype)  # (B, L, K) each
        if cond is not None and cond.drop is not None:
            keep = (~cond.drop_mask(B, x.device)).to(x.dtype)[:, None, None]  # (B, 1, 1)
            obs, mask = obs * keep, mask * keep
        tp = None if cond is None else cond.scalars
        if tp is None:
            tp = torch.arange(L, device=x.device, dtype=x.dtype).expand(B, L)  # (B, L)
        elif tp.shape != (B, L):
            raise ValueError(
                f"CSDINet: cond.scalars must be the (B, L) time points, got {tp.shape}"
            )
        return obs, mask, tp

    def forward(self, x: Tensor, c_noise: Tensor, cond: Condition | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.num_features:
            raise ValueError(f"CSDINet: x must be (B, L, {self.num_features}), got {x.shape}")
        B, L, K = x.shape
        obs, mask, tp = self._inputs(x, cond)
        inp = torch.stack([obs * mask, x * (1 - mask)], dim=1)  # (B, 2, L, K)
        h = F.relu(self.input_projection(rearrange(inp, "b c l k -> b c (k l)")))  # (B, C, K*L)
        h = rearrange(h, "b c (k l) -> b c k l", k=K)  # (B, C, K, L)

        te = sinusoidal_embedding(tp.reshape(-1), self.time_emb).to(x.dtype)  # (B*L, T) sin|cos
        te = rearrange(te, "(b l) (two h) -> b (h two) l", b=B, two=2)  # (B, T, L) interleaved
        fe = rearrange(self.embed_layer.weight, "k f -> f k")  # (F, K)
        side = torch.cat(
            [
                te[:, :, None, :].expand(-1, -1, K, -1),  # (B, T, K, L)
                fe[None, :, :, None].expand(B, -1, -1, L).to(x.dtype),  # (B, F, K, L)
                rearrange(mask, "b l k -> b 1 k l"),  # (B, 1, K, L)
            ],
            dim=1,
        )  # (B, T+F+1, K, L)

        emb = self.diffusion_embedding(c_noise.reshape(B))  # (B, step_emb)
        skip = torch.zeros_like(h)  # (B, C, K, L)
        for layer in self.residual_layers:
            h, s = layer(h, side, emb)  # (B, C, K, L) each
            skip = skip + s
        skip = skip / math.sqrt(len(self.residual_layers))  # (B, C, K, L)
        out = F.relu(self.output_projection1(rearrange(skip, "b c k l -> b c (k l)")))
        out = self.output_projection2(out)  # (B, 1, K*L)
        return rearrange(out, "b 1 (k l) -> b l k", k=K)  # (B, L, K)
