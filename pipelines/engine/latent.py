"""Latent diffusion glue (Rombach et al. 2022): the autoencoder as a training job, and the codec
that moves a diffusion model between pixel and latent space.

* ``stdiff train`` with ``model.net: autoencoder`` and ``loop.objective: autoencoder`` trains a
  :class:`diffusion.autoencoder.KLAutoencoder` with the shared engine (EMA, checkpoints, exact
  resume) on the task's ``x0`` (images, or weather states with ``data.residual: false``).
* ``data.latent: AE_RUN`` in a later training job trains the denoiser on ``z * scale`` where
  ``z ~ q(z | x0)`` is drawn with the step's generator and ``scale = 1 / std`` of the posterior
  means of the first training batches (LDM's scale factor). The checkpoint's metadata keeps
  ``latent = {autoencoder, scale, shape, size}``, so sampling jobs (``stdiff generate``) know to
  sample in latent space and decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stdiff.diffusion.autoencoder import KLAutoencoder, autoencoder_loss, latent_scale
from stdiff.pipelines.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    tensor_group,
)


class AutoencoderHolder(nn.Module):
    """Gives the autoencoder the ``.net`` the training engine checkpoints and averages; its
    forward is the autoencoder's, so that the loss runs through the engine's wrapper (DDP
    averages gradients only of what goes through its own forward)."""

    def __init__(self, net: KLAutoencoder) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, generator=None):
        return self.net(x, generator)


def autoencoder_loss_fn(kl_weight: float):
    """``loss_fn`` of :func:`pipelines.engine.train.train` for ``loop.objective: autoencoder``."""

    def loss_fn(forward, holder, x0, cond, mask, gen):
        # through ``forward`` (the DDP-wrapped holder under torchrun), not ``holder.net``:
        # a call that bypasses DDP's forward leaves each rank's gradients un-averaged
        return autoencoder_loss(forward, x0, kl_weight=kl_weight, generator=gen, mask=mask)

    return loss_fn


def load_autoencoder(
    run: str | Path, device: str | torch.device = "cpu"
) -> tuple[KLAutoencoder, dict[str, Any], Path]:
    """The trained autoencoder (EMA weights, eval, frozen), its job config and checkpoint path."""
    from stdiff.pipelines.engine.models import build_net

    path = Path(run)
    ckpt = path if (path / "weights.safetensors").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise ValueError(f"{path}: no autoencoder checkpoint (expected checkpoints/step_*)")
    groups, config, _ = load_checkpoint(ckpt / "weights.safetensors")
    model = config.get("model", {})
    if model.get("net") != "autoencoder":
        raise ValueError(f"{ckpt}: not an autoencoder run (model.net is {model.get('net')!r})")
    ae = build_net("autoencoder", model.get("params", {}), 0)
    load_weights(ae, tensor_group(groups, "ema", ckpt / "weights.safetensors"), ckpt)
    return ae.to(device).eval().requires_grad_(False), config, ckpt


@dataclass
class LatentCodec:
    """``encode``: data ``(B, C, H, W)`` -> scaled latents; ``decode``: the inverse map."""

    ae: KLAutoencoder
    scale: float
    size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ae.latent_channels, *self.ae.latent_size(*self.size))

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        post = self.ae.encode(x)
        z = post.mean if generator is None else post.sample(generator)
        return z * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(z / self.scale, self.size)

    def metadata(self, run: str | Path) -> dict[str, Any]:
        return {"autoencoder": str(run), "scale": self.scale, "shape": list(self.shape),
                "size": list(self.size)}  # fmt: skip


def fit_codec(run: str | Path, first_batches: list[torch.Tensor], device) -> LatentCodec:
    """The codec of the autoencoder ``run`` with its scale fitted on ``first_batches``."""
    ae, _, _ = load_autoencoder(run, device)
    batches = [b.to(device) for b in first_batches]
    return LatentCodec(ae, latent_scale(ae, batches), tuple(batches[0].shape[-2:]))


def codec_from_metadata(meta: dict[str, Any], device) -> LatentCodec | None:
    """The codec a latent checkpoint was trained with, or None for a pixel-space model."""
    lat = meta.get("latent")
    if not lat:
        return None
    ae, _, _ = load_autoencoder(lat["autoencoder"], device)
    return LatentCodec(ae, float(lat["scale"]), tuple(lat["size"]))


def latent_batches(to_batch, codec: LatentCodec):
    """Wrap a task's ``to_batch`` so that ``x0`` becomes a posterior draw of its scaled latent
    (the loss mask does not carry over to latents and is dropped)."""

    def wrapped(batch: dict, gen: torch.Generator):
        x0, cond, _ = to_batch(batch, gen)
        with torch.no_grad():
            return codec.encode(x0, gen), cond, None

    return wrapped
