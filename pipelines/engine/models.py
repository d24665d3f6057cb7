"""Networks and denoisers by name: the registries a config's ``model`` and ``schedule`` sections
are turned into objects through (house style 4: explicit registry dicts, no ``globals()``).

* ``NETS``: ``model.net`` -> the network's module and factory; ``model.params`` are its keyword
  arguments.
* ``KINDS``: ``model.kind`` -> the :class:`diffusion.precond.Denoiser` class that wraps the
  network (score, energy, learned variance, consistency).

Adding a network is one line in ``NETS``; nothing here knows about tasks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import (
    Denoiser,
    NoiseConditioning,
    NoisePool,
    Preconditioning,
    Prediction,
)

# name -> (module, factory); factories take the keyword parameters of ``model.params``
NETS: dict[str, tuple[str, str]] = {
    "mlp": ("stdiff.diffusion.nets.mlp", "MLPNet"),
    "csdi": ("stdiff.diffusion.nets.csdi", "CSDINet"),
    "dit": ("stdiff.diffusion.nets.dit", "make_dit"),  # registry sizes: {"name": "B/2", ...}
    "dit_custom": ("stdiff.diffusion.nets.dit", "DiT"),  # explicit depth / hidden / num_heads
    "unet": ("stdiff.diffusion.nets.unet", "UNet"),
    "autoencoder": ("stdiff.diffusion.autoencoder", "KLAutoencoder"),  # loop.objective: autoencoder
}

# model.kind -> the Denoiser class wrapping the network
KINDS: dict[str, tuple[str, str]] = {
    "score": ("stdiff.diffusion.precond", "Denoiser"),  # D = c_skip x + c_out F
    "energy": ("stdiff.diffusion.energy", "EnergyDenoiser"),  # D = x - sigma^2 grad E
    "learned_variance": (
        "stdiff.diffusion.variance",
        "VarianceDenoiser",
    ),  # IDDPM: F has 2C channels
    "consistency": ("stdiff.diffusion.distill", "ConsistencyDenoiser"),  # f(x, s_min) = x
}


@dataclass(frozen=True)
class ScheduleConfig:
    """A registered schedule name (``diffusion.schedules.SCHEDULES``) and its parameters."""

    name: str = "edm"
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """net: a name in ``NETS``; params: its constructor arguments; the parameterisation;
    kind: how the network becomes a denoiser (``KINDS``): ``score`` (the usual), ``energy`` (the
    gradient of a scalar energy, ``diffusion.energy``), ``learned_variance`` (IDDPM's extra
    variance channels, ``diffusion.variance``), ``consistency`` (a distilled consistency model);
    noise_pool: a one-evaluation CRPS generator's input noise made block-constant over
    ``noise_pool`` x ``noise_pool`` grid cells (:class:`diffusion.precond.NoisePool`; 0: white)."""

    net: str
    params: dict[str, Any] = field(default_factory=dict)
    prediction: Prediction = "edm"
    sigma_data: float = 0.5
    noise_conditioning: NoiseConditioning = "log_sigma"
    kind: Literal["score", "energy", "learned_variance", "consistency"] = "score"
    noise_pool: int = 0

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net {self.net!r} is not known; choose one of {sorted(NETS)}")
        if self.noise_pool < 0 or self.noise_pool == 1:
            raise ValueError(f"model.noise_pool must be 0 (white noise) or at least 2, got "
                             f"{self.noise_pool}")  # fmt: skip


def make_denoiser(m: ModelConfig, net: torch.nn.Module, schedule) -> Denoiser:
    """The network wrapped as ``m.kind`` with its preconditioning."""
    module, cls = KINDS[m.kind]
    denoiser_cls = getattr(importlib.import_module(module), cls)
    pre = Preconditioning(m.prediction, m.sigma_data, m.noise_conditioning)
    denoiser = denoiser_cls(net, pre, schedule)
    if m.noise_pool:
        NoisePool(m.noise_pool).attach(denoiser)
    return denoiser


def build_net(name: str, params: dict[str, Any], seed: int) -> torch.nn.Module:
    """The registered network ``name`` built with ``params`` and initialised from ``seed``."""
    module, factory = NETS[name]
    fn = getattr(importlib.import_module(module), factory)
    bad = [k for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool) and v < 0]
    if bad:
        raise ValueError(f"model.params.{bad[0]}: must not be negative, got {params[bad[0]]}")
    try:
        return build_seeded(lambda: fn(**params), seed)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model.params for net {name!r}: {_explain(fn, msg)}") from None


def _explain(fn, msg: str) -> str:
    """A constructor's TypeError in the config's words: the missing or unknown key, and the
    keys the net takes."""
    import inspect
    import re

    keys = [k for k, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]  # fmt: skip
    if (m := re.search(r"missing \d+ required positional arguments?: (.+)$", msg)) is not None:
        return f"{m.group(1).replace(' and ', ', ')} required; it takes {keys}"
    if (m := re.search(r"unexpected keyword argument '(\w+)'", msg)) is not None:
        return f"{m.group(1)!r} is not one of its parameters {keys}"
    return msg
