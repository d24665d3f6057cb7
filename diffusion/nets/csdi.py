"""CSDI's denoiser (Tashiro et al. 2021): residual layers of temporal + feature transformers.

The layout follows the official code (ermongroup/CSDI, ``diff_models.py`` / ``main_model.py``):
the input is 2 channels (conditional observations and the noisy target), every residual layer
adds the projected diffusion-step embedding, runs a 1-layer transformer over time ``L`` then one
over features ``K``, adds the projected side information (time embedding | feature embedding |
conditional mask) and applies the gated activation; the skips are summed and scaled by
1/sqrt(layers) and go through a two-layer output projection whose last layer starts at zero.

At the interface a sample is ``(B, L, K)`` (time, feature). Inside, the activations are kept
channels-last, ``(B, K, L, C)``, where the official code permutes ``(B, C, K, L)`` into sequences and
back twice per layer: the 1x1 convolutions are Linear layers over the last axis, the transformers
attend along an axis in place (:class:`EncoderLayer`), and the side-information projection is split
into its time, feature and mask parts (:meth:`ResidualBlock.side_terms`). The maths is unchanged
(tests compare with a permute-based reference built on PyTorch's own transformer layer) and, on this
project's 2-core CPU, a training step costs about 20 % less (BENCHMARKS.md, imputation speed).
Module names and shapes match the official state dict (``diffmodel.`` prefix removed,
``embed_layer`` kept), and the side-information time embedding is interleaved sin/cos like
``time_embedding`` there.

Deviations: ``output_projection2``'s bias is zero-initialised too (the official code zeros the
weight only) so the initial output is exactly 0; transformer dropout is 0.1 as the official code
(PyTorch's default there, on the attention weights, after attention and in and after the
feed-forward); it draws from torch's default generator, which the trainer re-seeds per
step inside ``fork_rng`` so runs stay reproducible, and it is off in ``eval()`` mode; attention input
projections are drawn from a fixed generator, since ``build_seeded`` redraws Linear layers only.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.embeddings import sinusoidal_embedding


def step_embedding(step: Tensor, dim: int = 128) -> Tensor:
    """CSDI's diffusion-step features ``(B,) -> (B, dim)`` evaluated at float steps.

    Frequencies ``10^(4 i / (dim/2 - 1))``, ``[sin | cos]``; at integer steps this is bit-equal to
    the official ``DiffusionEmbedding._build_embedding`` table (same float32 operations).
    """
    half = dim // 2
    freqs = 10.0 ** (torch.arange(half, dtype=torch.float32, device=step.device) / (half - 1) * 4.0)
    args = step.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, dim)


def interpolate_observed(obs: Tensor, mask: Tensor) -> Tensor:
    """Linear interpolation in time of the observed entries: ``obs``, ``mask`` ``(B, L, K)`` ->
    ``(B, L, K)``, each feature's observed values joined linearly, held constant before its
    first and after its last observation, 0 for a feature observed nowhere in the window
    (PriSTI's coarse conditional information, Liu et al. 2023)."""
    B, L, K = obs.shape
    t = torch.arange(L, device=obs.device).view(1, L, 1).expand(B, L, K)
    seen = mask > 0
    prev = torch.where(seen, t, -1).cummax(dim=1).values  # last observed step <= t, or -1
    nxt = torch.where(seen, t, L).flip(1).cummin(dim=1).values.flip(1)  # first >= t, or L
    pv = obs.gather(1, prev.clamp(min=0))
    nv = obs.gather(1, nxt.clamp(max=L - 1))
    both = (prev >= 0) & (nxt < L)
    gap = (nxt - prev).clamp(min=1).to(obs.dtype)
    w = torch.where(both & (nxt > prev), (t - prev).to(obs.dtype) / gap, torch.zeros_like(obs))
    out = torch.where(both, pv + (nv - pv) * w, torch.where(prev >= 0, pv, nv))
    return torch.where((prev >= 0) | (nxt < L), out, torch.zeros_like(obs))


EARTH_RADIUS_KM = 6371.0


def site_distances(coords: Tensor) -> Tensor:
    """Great-circle distances (km, haversine) ``(K, K)`` between ``coords`` ``(K, 2)`` given as
    (latitude, longitude) in degrees."""
    lat, lon = torch.deg2rad(coords[:, 0].double()), torch.deg2rad(coords[:, 1].double())
    dlat, dlon = lat[:, None] - lat[None], lon[:, None] - lon[None]
    a = (
        torch.sin(dlat / 2) ** 2
        + torch.cos(lat[:, None]) * torch.cos(lat[None]) * torch.sin(dlon / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * torch.asin(a.clamp(0, 1).sqrt())


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


def _linear(x: Tensor, conv: nn.Module) -> Tensor:
    """A kernel-1 ``Conv1d`` (or :class:`ZeroConv1x1`) applied as a Linear over the last dim."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def attention(
    q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0, bias: Tensor | None = None
) -> Tensor:
    """Softmax attention ``(N, h, S, d) -> (N, S, h, d)`` with dropout on the weights and an
    optional additive ``bias`` ``(h, S, S)`` on the logits (the geographic prior).

    On the GPU this is the fused ``scaled_dot_product_attention``. On the CPU, CSDI's 8-wide heads
    make the fused kernel slow; explicit matmuls over blocks of sequences whose weights fit in
    cache (about 4 MB) are faster than both it and one unblocked matmul (about 1.3x and 2.8x on
    the 48-step time attention), and the result is the same.
    """
    if q.device.type != "cpu":
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, mask, dropout).transpose(1, 2)
    n = max(1, (1 << 20) // (q.shape[1] * q.shape[2] * k.shape[2]))  # sequences per block
    blocks = []
    for i in range(0, q.shape[0], n):
        w = torch.matmul(q[i : i + n] * q.shape[-1] ** -0.5, k[i : i + n].transpose(-1, -2))
        w = w if bias is None else w + bias
        w = F.dropout(torch.softmax(w, dim=-1), dropout, dropout > 0)  # (n, h, S, S)
        blocks.append(torch.matmul(w, v[i : i + n]).transpose(1, 2))  # (n, S, h, d)
    return torch.cat(blocks)


class EncoderLayer(nn.Module):
    """PyTorch's post-norm ``TransformerEncoderLayer`` (GELU, feed-forward 64) over any axis.

    Same parameters and names (``self_attn`` is an ``nn.MultiheadAttention`` that only holds the
    weights) and the same dropouts (attention weights, after attention, inside and after the
    feed-forward), but the tokens stay where they are: ``forward(x, dim)`` attends along ``dim`` of
    a channels-last ``x``, so neither the time nor the feature attention needs a transpose copy of
    the activations; the attention itself is :func:`attention`.
    """

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(channels, 64)
        self.linear2 = nn.Linear(64, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.heads, self.p = heads, dropout

    def _attend(self, x: Tensor, dim: int, bias: Tensor | None = None) -> Tensor:
        a, h, p = self.self_attn, self.heads, self.p if self.training else 0.0
        qkv = F.linear(x, a.in_proj_weight, a.in_proj_bias)  # (..., 3C)
        qkv = rearrange(qkv, "... (three h d) -> three ... h d", three=3, h=h).movedim(dim + 1, -2)
        outer = qkv.shape[1:-3]  # the batch axes: (B, K) for time, (B, L) for features
        q, k, v = (z.reshape(-1, *z.shape[-3:]) for z in qkv)  # (N, h, S, d)
        o = attention(q, k, v, p, bias)  # (N, S, h, d)
        o = rearrange(o.reshape(*outer, *o.shape[1:]), "... s h d -> ... s (h d)").movedim(-2, dim)
        return F.dropout(a.out_proj(o), p, self.training)

    def forward(self, x: Tensor, dim: int, bias: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self._attend(x, dim, bias))
        ff = self.linear2(F.dropout(F.gelu(self.linear1(x)), self.p, self.training))
        return self.norm2(x + F.dropout(ff, self.p, self.training))


class Encoder(nn.Module):
    """One :class:`EncoderLayer` under ``layers.0``, the state-dict layout of a 1-layer
    ``nn.TransformerEncoder`` (and of the official checkpoints)."""

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(channels, heads, dropout)])

    def forward(self, x: Tensor, dim: int, bias: Tensor | None = None) -> Tensor:
        return self.layers[0](x, dim, bias)


class ResidualBlock(nn.Module):
    """One residual layer on channels-last ``(B, K, L, C)`` activations.

    The side information is ``[time embedding (L) | feature embedding (K) | mask (K, L)]``, so its
    projection splits exactly into a per-time part, a per-feature part and the mask's column:
    :meth:`side_terms` computes it as two small tables per layer and forward instead of a 145-channel
    projection at every one of the K*L positions (a fifth of CSDI's FLOPs).
    """

    def __init__(self, side_dim: int, channels: int, step_dim: int, heads: int, dropout: float):
        super().__init__()
        self.diffusion_projection = nn.Linear(step_dim, channels)
        self.cond_projection = nn.Conv1d(side_dim, 2 * channels, 1)
        self.mid_projection = nn.Conv1d(channels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)
        self.time_layer = Encoder(channels, heads, dropout)
        self.feature_layer = Encoder(channels, heads, dropout)

    def side_terms(self, te: Tensor, fe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, L, 2C)`` time part (bias included), ``(K, 2C)`` feature part, ``(2C,)`` mask
        column of the side projection, from ``te (B, L, T)`` and ``fe (K, F)``."""
        w = self.cond_projection.weight.squeeze(-1)  # (2C, T+F+1)
        t, f = te.shape[-1], fe.shape[-1]
        time = F.linear(te, w[:, :t], self.cond_projection.bias)  # (B, L, 2C)
        return time, F.linear(fe, w[:, t : t + f]), w[:, t + f]

    def forward(
        self,
        x: Tensor,
        side: tuple[Tensor, Tensor, Tensor],
        mask: Tensor,
        emb: Tensor,
        geo: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        K, L = x.shape[1:3]  # x: (B, K, L, C), mask: (B, K, L, 1), emb: (B, step_dim)
        y = x + self.diffusion_projection(emb)[:, None, None, :]  # (B, K, L, C)
        if L > 1:
            y = self.time_layer(y, dim=2)  # attends over time, per (stay, feature)
        if K > 1:
            y = self.feature_layer(y, dim=1, bias=geo)  # over features, per (stay, time)
        time, feature, column = side
        y = _linear(y, self.mid_projection) + time[:, None] + feature[:, None] + mask * column
        gate, filt = y.chunk(2, dim=-1)  # (B, K, L, C) each
        y = _linear(torch.sigmoid(gate) * torch.tanh(filt), self.output_projection)
        residual, skip = y.chunk(2, dim=-1)  # (B, K, L, C) each
        return (x + residual) / math.sqrt(2.0), skip


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
      interp: a third input channel, the observed values interpolated linearly in time
        (:func:`interpolate_observed`; PriSTI's coarse conditioning).
      coords: ``(K, 2)`` latitude, longitude (degrees) of every feature's site: a geographic
        prior (PriSTI's anchor, in a light form). The feature attention's logits get the bias
        ``-exp(g_h) (d_ij / d_med)^2`` per head ``h`` (``d``: great-circle distance, ``d_med``:
        the median distance between distinct sites, ``g_h`` learned, starting at 0), and the
        feature embedding adds a learned projection of the standardised coordinates.
      Both default off: the network is then the paper's, state dict included.
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
        interp: bool = False,
        coords: list[list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.channels, self.time_emb = num_features, channels, time_emb
        self.interp = bool(interp)
        side_dim = time_emb + feature_emb + 1
        self.embed_layer = nn.Embedding(num_features, feature_emb)
        self.diffusion_embedding = DiffusionEmbedding(step_emb)
        self.input_projection = nn.Conv1d(3 if self.interp else 2, channels, 1)
        self.geo = coords is not None
        if coords is not None:
            self._init_geo(coords, num_features, heads, feature_emb)
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

    def _init_geo(self, coords, num_features: int, heads: int, feature_emb: int) -> None:
        c = torch.as_tensor(coords, dtype=torch.float64)
        if c.shape != (num_features, 2) or not torch.isfinite(c).all():
            raise ValueError(
                f"CSDINet: coords must be {num_features} (latitude, longitude) pairs, "
                f"got shape {tuple(c.shape)}"
            )
        d = site_distances(c)
        apart = d[d > 1e-6]
        scale = apart.median() if apart.numel() else torch.tensor(1.0, dtype=torch.float64)
        self.register_buffer("geo_d2", (d / scale).pow(2).float(), persistent=False)
        std = c.std(0).clamp_min(1e-6) if num_features > 1 else torch.ones(2, dtype=c.dtype)
        self.register_buffer("geo_xy", ((c - c.mean(0)) / std).float(), persistent=False)
        self.geo_scale = nn.Parameter(torch.zeros(heads))
        self.geo_embed = nn.Linear(2, feature_emb)

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
        B = x.shape[0]
        obs, mask, tp = self._inputs(x, cond)
        parts = [obs * mask, x * (1 - mask)]
        if self.interp:
            parts.append(interpolate_observed(obs * mask, mask))
        inp = torch.stack(parts, dim=-1)  # (B, L, K, 2 or 3)
        h = F.relu(_linear(inp.transpose(1, 2), self.input_projection))  # (B, K, L, C)

        te = sinusoidal_embedding(tp.reshape(-1), self.time_emb).to(x.dtype)  # (B*L, T) sin|cos
        te = rearrange(te, "(b l) (two h) -> b l (h two)", b=B, two=2)  # (B, L, T) interleaved
        fe = self.embed_layer.weight.to(x.dtype)  # (K, F)
        geo = None
        if self.geo:
            fe = fe + self.geo_embed(self.geo_xy).to(x.dtype)
            geo = (-self.geo_scale.exp()[:, None, None] * self.geo_d2).to(x.dtype)  # (h, K, K)
        m = rearrange(mask, "b l k -> b k l 1")  # (B, K, L, 1)

        emb = self.diffusion_embedding(c_noise.reshape(B))  # (B, step_emb)
        skip = torch.zeros_like(h)  # (B, K, L, C)
        for layer in self.residual_layers:
            h, s = layer(h, layer.side_terms(te, fe), m, emb, geo)  # (B, K, L, C) each
            skip = skip + s
        skip = skip / math.sqrt(len(self.residual_layers))  # (B, K, L, C)
        out = _linear(F.relu(_linear(skip, self.output_projection1)), self.output_projection2)
        return rearrange(out, "b k l 1 -> b l k")  # (B, L, K)
