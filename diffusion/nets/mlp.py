"""A residual MLP denoiser for low-dimensional data (the 2-D demo, analytic tests)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.embeddings import NoiseEmbedding


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        return h + self.ff(self.norm(h) * (1 + scale) + shift)


class MLPNet(nn.Module):
    """``net(x_in (B, *shape), c_noise (B,), cond) -> (B, *shape)``.

    Args:
      dim: number of features of one sample (``prod(shape)``).
      hidden, depth: width and number of residual FiLM blocks.
      num_classes: with ``> 0``, ``cond.labels`` are embedded; index ``num_classes`` is the null
        class used where ``cond.drop`` is set (classifier-free guidance).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.inp = nn.Linear(dim, hidden)
        self.noise = NoiseEmbedding(hidden)
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor, cond: Condition | None = None) -> Tensor:
        shape = x.shape
        h = self.inp(rearrange(x, "b ... -> b (...)"))  # (B, hidden)
        emb = self.noise(c_noise)  # (B, hidden)
        if self.label is not None:
            labels = torch.full((shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            if cond is not None and cond.labels is not None:
                keep = ~cond.drop_mask(shape[0], x.device)
                labels = labels.where(~keep, cond.labels.long())
            emb = emb + self.label(labels)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(shape)  # (B, *shape)
