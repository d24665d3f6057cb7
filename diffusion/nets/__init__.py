"""Denoiser networks ``net(x_in, c_noise, cond) -> output`` (wrapped by ``diffusion.precond``):
a residual MLP (low-dimensional data), CSDI (time series), DiT (grids, images), U-Net (images)."""

from stdiff.diffusion.nets.csdi import CSDINet
from stdiff.diffusion.nets.dit import DIT_CONFIGS, DiT, make_dit
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.nets.unet import UNet

__all__ = ["DIT_CONFIGS", "CSDINet", "DiT", "MLPNet", "UNet", "make_dit"]
