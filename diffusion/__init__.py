"""stdiff's diffusion core: schedules, preconditioning, losses, samplers, guidance, likelihoods.

Depends on torch (and, for networks, timm and einops) only: no xarray, no Prefect.
"""

from diffusion.analytic import GaussianMixture
from diffusion.conditioning import Condition
from diffusion.energy import EnergyDenoiser
from diffusion.guidance import classifier_free_guidance, classifier_guidance
from diffusion.likelihood import bits_per_dim, log_likelihood
from diffusion.losses import denoising_loss
from diffusion.precond import Denoiser, Preconditioning
from diffusion.rng import member_generators
from diffusion.samplers import SAMPLERS, get_sampler, sample
from diffusion.schedules import SCHEDULES, make_schedule
from diffusion.variance import VarianceDenoiser

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "Condition",
    "Denoiser",
    "EnergyDenoiser",
    "GaussianMixture",
    "Preconditioning",
    "VarianceDenoiser",
    "bits_per_dim",
    "classifier_free_guidance",
    "classifier_guidance",
    "denoising_loss",
    "get_sampler",
    "log_likelihood",
    "make_schedule",
    "member_generators",
    "sample",
]
