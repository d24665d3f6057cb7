"""Guidance as wrappers: each takes a denoiser and returns a denoiser ``D(x, sigma, cond)``.

* Classifier-free guidance (Ho & Salimans 2022): ``D_w = D_u + w (D_c - D_u)``, the denoiser of
  ``p(x)^(1-w) p(x|y)^w`` (linear in x0-, eps- and score-space alike). Optional CFG-rescale
  (Lin et al. 2023, sec. 3.4): match the guided prediction's std to the conditional one's.
* Classifier guidance (Dhariwal & Nichol 2021): ``D_g = D + s sigma^2 grad_x log p(y | x, sigma)``,
  since ``D = x + sigma^2 score``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import expand_sigma

DenoiserFn = Callable[[Tensor, Tensor, Condition | None], Tensor]
ClassifierFn = Callable[[Tensor, Tensor, Condition], Tensor]


def classifier_free_guidance(
    denoiser: DenoiserFn, scale: float, *, rescale: float = 0.0, batched: bool = True
) -> DenoiserFn:
    """Wrap ``denoiser`` with classifier-free guidance of weight ``scale`` (1 = conditional).

    The wrapper keeps what special samplers need: ``predict`` (learned variances, taken from the
    conditional branch) and ``energy_and_grad`` (the guided energy ``E_u + w (E_c - E_u)``,
    without CFG-rescale) when ``denoiser`` has them.

    Args:
      scale: guidance weight ``w``; 0 gives the unconditional denoiser.
      rescale: CFG-rescale factor phi in [0, 1]; 0 disables it.
      batched: evaluate the conditional and the null branch in one doubled batch.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must lie in [0, 1], got {rescale}")

    def guided(x: Tensor, sigma: Tensor, cond: Condition | None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a Condition to drop")
        if scale == 1.0 and rescale == 0.0:
            return denoiser(x, sigma, cond)
        b = x.shape[0]
        sigma = expand_sigma(sigma, x).reshape(-1)  # (B,), also for a float sigma
        null = cond.dropped(b)
        if batched:
            both = Condition.cat([cond, null], [b, b])
            d_c, d_u = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        else:
            d_c, d_u = denoiser(x, sigma, cond), denoiser(x, sigma, null)
        out = d_u + scale * (d_c - d_u)
        if rescale > 0:
            dims = tuple(range(1, x.ndim))
            ratio = d_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp_min(
                1e-12
            )
            out = rescale * out * ratio + (1 - rescale) * out
        return out

    if hasattr(denoiser, "predict"):  # learned variances: the conditional branch's (as ADM)

        def predict(x: Tensor, sigma: Tensor, cond: Condition | None):
            return guided(x, sigma, cond), denoiser.predict(x, sigma, cond)[1]

        guided.predict = predict  # type: ignore[attr-defined]
    if hasattr(denoiser, "energy_and_grad"):  # energy models: E_u + w (E_c - E_u), as D

        def energy_and_grad(x: Tensor, sigma: Tensor, cond: Condition | None):
            e_c, g_c = denoiser.energy_and_grad(x, sigma, cond)
            if scale == 1.0 or cond is None:
                return e_c, g_c
            e_u, g_u = denoiser.energy_and_grad(x, sigma, cond.dropped(x.shape[0]))
            return e_u + scale * (e_c - e_u), g_u + scale * (g_c - g_u)

        guided.energy_and_grad = energy_and_grad  # type: ignore[attr-defined]
    return guided


def classifier_guidance(denoiser: DenoiserFn, log_prob: ClassifierFn, scale: float) -> DenoiserFn:
    """Wrap ``denoiser`` with the gradient of a noise-conditional classifier.

    ``log_prob(x, sigma, cond) -> (B,)`` returns ``log p(cond.labels | x, sigma)``; it must be
    differentiable in ``x``. The denoiser itself is called unconditionally (``cond`` dropped)
    unless ``cond`` has no labels.
    """

    def guided(x: Tensor, sigma: Tensor, cond: Condition | None) -> Tensor:
        if cond is None or cond.labels is None:
            raise ValueError("classifier guidance needs cond.labels (the class to steer towards)")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(xg, sigma, cond).sum(), xg)
        d = denoiser(x, sigma, cond.dropped(x.shape[0]))
        return d + scale * expand_sigma(sigma, x) ** 2 * grad.to(d.dtype)

    return guided
