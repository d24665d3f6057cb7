"""The KL autoencoder of latent diffusion: its KL against brute force, its posterior sampling,
shapes with padding, and latent sampling through a codec against an exact Gaussian answer."""

from __future__ import annotations

import pytest
import torch

from stdiff.diffusion.analytic import GaussianMixture
from stdiff.diffusion.autoencoder import (
    DiagonalGaussian,
    KLAutoencoder,
    autoencoder_loss,
    latent_scale,
    reconstruction_psnr,
)
from stdiff.diffusion.samplers import sample
from stdiff.diffusion.schedules import make_schedule
from stdiff.pipelines.engine.latent import LatentCodec


def test_kl_matches_monte_carlo_and_closed_form():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(2, 3, generator=g, dtype=torch.float64)
    post = DiagonalGaussian(mean, logvar)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, post.std), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    torch.testing.assert_close(post.kl(), ref)
    # Monte Carlo: E_q[log q(z) - log p(z)]
    z = mean + post.std * torch.randn(200_000, 2, 3, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mean, post.std).log_prob(z).sum(-1)
    p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close((q - p).mean(0), ref, rtol=0.02, atol=0.02)


def test_posterior_sample_has_its_moments_and_follows_the_generator():
    mean, logvar = (
        torch.full((50_000, 1), 2.0),
        torch.full((50_000, 1), 2 * torch.log(torch.tensor(0.5))),
    )
    post = DiagonalGaussian(mean, logvar)
    z = post.sample(torch.Generator().manual_seed(1))
    assert float(z.mean()) == pytest.approx(2.0, abs=0.01)
    assert float(z.std()) == pytest.approx(0.5, rel=0.02)
    torch.testing.assert_close(z, post.sample(torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(("size", "latent"), [((28, 28), (7, 7)), ((73, 144), (19, 36))])
def test_shapes_pad_and_crop(size, latent):
    ae = KLAutoencoder(2, latent_channels=3, channels=8, periodic_lon=size[1] == 144)
    x = torch.randn(2, 2, *size)
    out, post = ae(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and post.mean.shape == (2, 3, *latent)
    assert ae.latent_size(*size) == latent


def test_training_reduces_the_reconstruction_error():
    torch.manual_seed(0)  # test-only init of the tiny autoencoder
    ae = KLAutoencoder(1, latent_channels=2, channels=8, channel_mult=(1, 2))
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)

    def batch():
        c = torch.rand(32, 2, generator=g) * 8
        d2 = (yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2
        return (2 * torch.exp(-d2 / 6) - 1)[:, None]

    x_test = batch()
    with torch.no_grad():
        before = float(
            reconstruction_psnr(x_test, ae.decode(ae.encode(x_test).mean, (8, 8))).mean()
        )
    for _ in range(150):
        loss = autoencoder_loss(ae, batch(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(reconstruction_psnr(x_test, ae.decode(ae.encode(x_test).mean, (8, 8))).mean())
    assert after > before + 10 and after > 20


class _LinearAE:
    """An invertible linear 'autoencoder' ``z = A x`` (deterministic posterior)."""

    latent_channels = 2

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.a_inv = a, torch.linalg.inv(a)

    def latent_size(self, h, w):
        return h, w

    def encode(self, x):
        z = torch.einsum("ij,bjhw->bihw", self.a, x)
        return DiagonalGaussian(z, torch.full_like(z, -30.0))

    def decode(self, z, size=None):
        return torch.einsum("ij,bjhw->bihw", self.a_inv, z)


def test_latent_sampling_through_the_codec_recovers_the_data_distribution():
    """Data x ~ N(0, S) (2 channels, 1x1 grid), latents z = scale * A x ~ N(0, scale^2 A S A^T):
    sampling the exact latent denoiser and decoding gives back N(0, S)."""
    dt = torch.float64
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=dt)
    a = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=dt)
    g = torch.Generator().manual_seed(0)
    x = (torch.linalg.cholesky(cov) @ torch.randn(2, 20_000, generator=g, dtype=dt)).T
    ae = _LinearAE(a)
    scale = latent_scale(ae, [x.reshape(-1, 2, 1, 1)])
    codec = LatentCodec(ae, scale, (1, 1))
    assert codec.shape == (2, 1, 1)
    z = codec.encode(x.reshape(-1, 2, 1, 1))
    assert float(z.std()) == pytest.approx(1.0, rel=1e-6)  # the scale makes latents unit-std
    lat_cov = scale**2 * a @ cov @ a.T
    gm = GaussianMixture(torch.zeros(1, 2, dtype=dt), lat_cov[None])

    def latent_denoiser(zz, sigma, cond=None):
        return gm.denoise(zz.reshape(-1, 2), sigma).reshape(zz.shape)

    sigmas = make_schedule("edm").discretize(40)
    zs = sample(latent_denoiser, (20_000, 2, 1, 1), sigmas, sampler="heun",
                generator=torch.Generator().manual_seed(1), dtype=dt)  # fmt: skip
    xs = codec.decode(zs).reshape(-1, 2)
    torch.testing.assert_close(torch.cov(xs.T), cov, rtol=0.05, atol=0.02)
