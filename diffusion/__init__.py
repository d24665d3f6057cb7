"""stdiff's diffusion core: schedules, preconditioning, losses, samplers, guidance, likelihoods.

Depends on torch (and, for networks, timm and einops) only: no xarray, no Prefect.
"""

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.energy import EnergyDenoiser
from stdiff.diffusion.guidance import classifier_free_guidance, classifier_guidance
from stdiff.diffusion.likelihood import bits_per_dim, log_likelihood
from stdiff.diffusion.losses import denoising_loss
from stdiff.diffusion.precond import Denoiser, Preconditioning
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import SAMPLERS, get_sampler, sample
from stdiff.diffusion.schedules import SCHEDULES, make_schedule
from stdiff.diffusion.variance import VarianceDenoiser

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
