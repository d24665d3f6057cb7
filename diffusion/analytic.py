"""Gaussian mixtures with closed-form noisy densities, scores and denoisers.

For data ``x0 ~ sum_k w_k N(mu_k, S_k)`` the noisy marginal at level sigma is
``p_sigma(x) = sum_k w_k N(x; mu_k, S_k + sigma^2 I)`` and the optimal denoiser is

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)),

with responsibilities ``r_k = w_k N_k / sum_j w_j N_j``; the score is ``(D - x) / sigma^2``
(Tweedie). Conditioning on a class label ``y`` replaces the mixture by component ``y``.
These exact answers drive the tests and benchmarks of samplers, guidance and likelihoods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.rng import ensure_generator


class GaussianMixture:
    """A ``K``-component Gaussian mixture in ``d`` dimensions (float64 internally).

    Args:
      means: ``(K, d)``.
      covs: ``(K, d, d)`` full covariances, or ``(K, d)`` diagonals.
      weights: ``(K,)`` mixture weights (normalised here); uniform when omitted.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        c = torch.as_tensor(covs, dtype=torch.float64)
        if c.shape == (k, d):
            c = torch.diag_embed(c)
        if c.shape != (k, d, d):
            raise ValueError(
                f"covs must have shape ({k}, {d}, {d}) or ({k}, {d}), got {tuple(c.shape)}"
            )
        self.covs = c
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers")
        self.weights = w / w.sum()
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # (K, d), (K, d, d)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        """The mixture mean ``(d,)``."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        """The mixture covariance ``(d, d)``."""
        mu = self.mean()
        dm = self.means - mu
        return (self.weights[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)

    def _project(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Eigen-coordinates ``y = U_k^T (x - mu_k)`` ``(B, K, d)`` and ``lam + sigma^2`` ``(B, K, d)``."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        diff = x[:, None, :] - self.means.to(x.device)[None]  # (B, K, d)
        y = torch.einsum("kde,bkd->bke", self.eigvecs.to(x.device), diff)
        var = self.eigvals.to(x.device)[None] + (s**2)[:, None, None]
        return x, y, var

    def component_log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log N(x; mu_k, S_k + sigma^2 I)`` for every component: ``(B, K)``."""
        _, y, var = self._project(x, sigma)
        return self._log_normal(y, var)

    def _log_normal(self, y: Tensor, var: Tensor) -> Tensor:
        return -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_sigma(x)`` in nats: ``(B,)``."""
        lw = self.weights.log().to(x.device)
        return torch.logsumexp(lw + self.component_log_prob(x, sigma), dim=-1)

    def class_log_posterior(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``log p(y = k | x, sigma)``: ``(B, K)``, the exact noise-conditional classifier."""
        lj = self.weights.log().to(x.device) + self.component_log_prob(x, sigma)
        return lj - torch.logsumexp(lj, dim=-1, keepdim=True)

    def denoise(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        """The exact ``E[x0 | x_sigma]`` (conditional on ``cond.labels`` unless dropped), ``x.shape``."""
        _xf, y, var = self._project(x, sigma)
        shrink = self.eigvals.to(x.device)[None] / var  # (B, K, d)
        comp = self.means.to(x.device)[None] + torch.einsum(
            "kde,bke->bkd", self.eigvecs.to(x.device), shrink * y
        )
        lj = self.weights.log().to(x.device) + self._log_normal(y, var)
        resp = torch.softmax(lj, dim=-1)  # (B, K)
        if cond is not None and cond.labels is not None:
            onehot = torch.nn.functional.one_hot(cond.labels.long(), self.num_components)
            keep = ~cond.drop_mask(x.shape[0], x.device)
            resp = torch.where(keep[:, None], onehot.to(resp.dtype), resp)
        out = (resp[:, :, None] * comp).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        return self.denoise(x, sigma, cond)

    def score(self, x: Tensor, sigma: Tensor | float, cond: Condition | None = None) -> Tensor:
        """``grad_x log p_sigma(x)`` (Tweedie): ``(D - x) / sigma^2``."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(
            -1, *([1] * (x.ndim - 1))
        )
        return (self.denoise(x, sigma, cond) - x) / s**2

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` exact samples ``(n, d)`` (float64) and their component labels ``(n,)``."""
        g = ensure_generator(generator)
        if labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)[labels]  # (n, d, d)
        return self.means[labels] + torch.einsum("nde,ne->nd", chol, z), labels

    def flow_map(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE map for a single Gaussian (``K = 1``).

        In the eigenbasis of S, ``dy/dsigma = sigma y / (lam + sigma^2)``, so
        ``y(s1) = y(s0) sqrt((lam + s1^2) / (lam + s0^2))``.
        """
        if self.num_components != 1:
            raise ValueError("flow_map has a closed form for a single Gaussian only (K = 1)")
        _xf, y, var0 = self._project(x, sigma_from)
        ratio = ((self.eigvals[0] + sigma_to**2) / var0[:, 0]).sqrt()
        out = self.means[0] + torch.einsum("de,be->bd", self.eigvecs[0], ratio * y[:, 0])
        return out.reshape(x.shape).to(x.dtype)
