"""Denoiser networks ``net(x_in, c_noise, cond) -> output`` (wrapped by ``diffusion.precond``)."""

from diffusion.nets.mlp import MLPNet

__all__ = ["MLPNet"]
