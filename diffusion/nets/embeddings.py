"""Embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style embedding of a ``(B,)`` float tensor into ``(B, dim)`` (sin | cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class NoiseEmbedding(nn.Module):
    """``c_noise`` ``(B,)`` -> ``(B, dim)``: sinusoidal features (scaled for ln(sigma)/4 inputs)
    followed by a two-layer MLP, as in DDPM/EDM networks."""

    def __init__(self, dim: int, scale: float = 100.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(c_noise * self.scale, self.dim))
