"""A KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, "LDM").

``encode(x) -> DiagonalGaussian`` over latents of ``latent_channels`` channels at ``1 / 2^L`` of
the input resolution (``L = len(channel_mult) - 1``); ``decode(z) -> x``. Inputs whose sides are
not multiples of ``2^L`` are padded (reflect in y; circular in x with ``periodic_lon``, as weather
grids) and the output is cropped back, so the latent grid is ``ceil(side / 2^L)``.

Training objective (:func:`autoencoder_loss`): per-sample reconstruction error (L1 by default;
LDM adds LPIPS and a patch GAN, which would need downloaded weights) plus ``kl_weight`` times
``KL(q(z|x) || N(0, I))``, both summed over the sample and divided by the number of input
values. LDM's ``kl_weight`` is 1e-6: the KL term only keeps the latent scale in check; the
diffusion model then sees ``z * scale`` with ``scale = 1 / std(z)`` over training data
(:func:`latent_scale`, LDM's ``scale_factor``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stdiff.diffusion.nets.dit import pad_to_patch
from stdiff.diffusion.nets.unet import _norm
from stdiff.diffusion.rng import Generators, randn_like


class DiagonalGaussian:
    """``N(mean, exp(logvar))`` per latent element; ``logvar`` is clamped to [-30, 20] as LDM."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = (0.5 * self.logvar).exp()

    def sample(self, generator: Generators = None) -> Tensor:
        return self.mean + self.std * randn_like(self.mean, generator)

    def kl(self) -> Tensor:
        """``KL(N(mean, var) || N(0, 1))`` summed over non-batch dims, shape ``(B,)``."""
        var = self.logvar.exp()
        return 0.5 * (self.mean**2 + var - 1 - self.logvar).flatten(1).sum(1)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class KLAutoencoder(nn.Module):
    """Encoder ``conv -> [res, down] x L -> res -> norm, SiLU, conv(2 * latent_channels)`` and
    the mirrored decoder (nearest upsampling + conv).

    Args:
      in_channels: image / field channels.
      latent_channels: channels of ``z``.
      channels: base width; level ``i`` has ``channels * channel_mult[i]``.
      periodic_lon: pad the last axis circularly (global longitude grids).
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int = 4,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        periodic_lon: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.periodic_lon = periodic_lon
        self.factor = 2 ** (len(channel_mult) - 1)
        widths = [channels * m for m in channel_mult]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            enc.append(_Res(widths[max(i - 1, 0)], w))
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        enc += [_Res(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU()]
        enc.append(nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        dec.append(_Res(widths[-1], widths[-1]))
        for i in reversed(range(len(widths))):
            dec.append(_Res(widths[min(i + 1, len(widths) - 1)], widths[i]))
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(widths[i], widths[i], 3, padding=1)]  # fmt: skip
        dec += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def latent_size(self, h: int, w: int) -> tuple[int, int]:
        return math.ceil(h / self.factor), math.ceil(w / self.factor)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """``x`` ``(B, C, H, W)`` -> the posterior over ``(B, latent_channels, H', W')``."""
        h = self.encoder(pad_to_patch(x, self.factor, self.periodic_lon))
        mean, logvar = h.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``z`` -> ``(B, C, H, W)``, cropped to ``size`` (default: the full decoded grid)."""
        x = self.decoder(z)
        return x if size is None else x[..., : size[0], : size[1]]

    def forward(self, x: Tensor, generator: Generators = None) -> tuple[Tensor, DiagonalGaussian]:
        post = self.encode(x)
        return self.decode(post.sample(generator), tuple(x.shape[-2:])), post


def autoencoder_loss(
    ae: KLAutoencoder,
    x: Tensor,
    *,
    kl_weight: float = 1e-6,
    recon: Literal["l1", "l2"] = "l1",
    generator: Generators = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Reconstruction + ``kl_weight`` KL, per input value (see module docstring); ``mask``: 1
    where the reconstruction counts (e.g. land/sea or observed values)."""
    if recon not in ("l1", "l2"):
        raise ValueError(f"recon={recon!r} is not valid; choose one of ['l1', 'l2']")
    out, post = ae(x, generator)
    err = (out.float() - x.float()).abs() if recon == "l1" else (out.float() - x.float()) ** 2
    if mask is not None:
        err = err * torch.broadcast_to(mask.to(err.dtype), err.shape)
    n = x[0].numel()
    return ((err.flatten(1).sum(1) + kl_weight * post.kl().float()) / n).mean()


@torch.no_grad()
def latent_scale(ae: KLAutoencoder, batches: Sequence[Tensor]) -> float:
    """LDM's ``scale_factor``: ``1 / std`` of the posterior means over ``batches``."""
    z = torch.cat([ae.encode(b).mean.flatten() for b in batches])
    return float(1 / z.float().std().clamp_min(1e-8))


def reconstruction_psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-sample PSNR in dB of ``y`` against ``x`` (values spanning ``data_range``)."""
    mse = F.mse_loss(y.float(), x.float(), reduction="none").flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
