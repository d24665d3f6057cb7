"""Schedules: monotone sigmas, final sigma 0, pinned known values, valid-choice errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stdiff.diffusion.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    csdi_quad,
    edm,
    make_schedule,
    rescale_zero_terminal_snr,
    ve,
    vp_cosine,
    vp_linear,
)

ALL = sorted(SCHEDULES)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n", [1, 5, 50])
def test_discretize_contract(name: str, n: int) -> None:
    s = make_schedule(name)
    sig = s.discretize(n)
    assert sig.shape == (n + 1,)
    assert sig[-1] == 0.0
    assert bool((sig[:-1] > 0).all())
    assert bool((sig[:-1] - sig[1:] > 0).all()), "sigmas must strictly decrease"
    assert math.isclose(float(sig[0]), s.sigma_max, rel_tol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_sigma_monotone_and_inverse(name: str) -> None:
    s = make_schedule(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sig = s.sigma(t)
    assert bool((sig[1:] > sig[:-1]).all())
    assert math.isclose(float(sig[0]), s.sigma_min, rel_tol=1e-9)
    assert math.isclose(float(sig[-1]), s.sigma_max, rel_tol=1e-9)
    torch.testing.assert_close(s.sigma_to_t(sig), t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_training_sigmas_in_range_and_seeded(name: str) -> None:
    s = make_schedule(name)
    a = s.sample_training_sigma(1000, torch.Generator().manual_seed(3))
    b = s.sample_training_sigma(1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == (1000,) and bool((a > 0).all())


def test_csdi_quad_pinned() -> None:
    """CSDI's quad schedule: alpha-bar at t = 50 is prod(1 - beta) = 3.3540789e-05."""
    s = csdi_quad()
    betas = np.linspace(1e-4**0.5, 0.5**0.5, 50) ** 2
    assert s.num_timesteps == 50
    assert math.isclose(float(s.alpha_bar[-1]), 3.354078875408494e-05, rel_tol=1e-9)
    assert math.isclose(float(s.alpha_bar[-1]), float(np.prod(1 - betas)), rel_tol=1e-12)
    assert math.isclose(float(s.betas[0]), 1e-4, rel_tol=1e-12)
    assert math.isclose(float(s.betas[-1]), 0.5, rel_tol=1e-12)
    # all 50 steps in order, as CSDI samples
    torch.testing.assert_close(s.discretize(50)[:-1], s.sigmas_table.flip(0))


def test_ddpm_linear_pinned() -> None:
    """DDPM: alpha-bar at T = 1000 is 4.0358e-05 (sigma_max ~ 157.4), beta_1 = 1e-4."""
    s = vp_linear()
    assert math.isclose(float(s.alpha_bar[-1]), 4.035829765375676e-05, rel_tol=1e-9)
    assert math.isclose(s.sigma_max, math.sqrt((1 - 4.035829765375676e-05) / 4.035829765375676e-05))
    assert math.isclose(s.sigma_min, math.sqrt(1e-4 / (1 - 1e-4)), rel_tol=1e-9)


def test_cosine_matches_formula() -> None:
    """IDDPM cosine: alpha-bar(t) = f(t)/f(0), f = cos^2((t/T + s)/(1 + s) pi/2), mid-range."""
    s = vp_cosine()
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for k in (0, 100, 500, 900):
        assert math.isclose(float(s.alpha_bar[k]), f(k + 1) / f(0), rel_tol=1e-9)


def test_edm_and_ve_pinned() -> None:
    e = edm().discretize(18)
    assert math.isclose(float(e[0]), 80.0) and math.isclose(float(e[-2]), 0.002, rel_tol=1e-9)
    # Karras eq. 5 at i = 1 of N = 18 with rho = 7
    expect = (80 ** (1 / 7) + 1 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(float(e[1]), expect, rel_tol=1e-12)
    v = ve().discretize(10)
    ratios = v[:-2] / v[1:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (50 / 0.01) ** (1 / 9)))


def test_zero_terminal_snr() -> None:
    """Lin et al. 2023: sqrt(abar) shifted so the last is 0 (clamped to 2**-24), first unchanged."""
    base, z = vp_linear(), vp_linear(zero_terminal_snr=True)
    assert math.isclose(float(z.alpha_bar[0]), float(base.alpha_bar[0]), rel_tol=1e-9)
    raw = torch.cumprod(1 - rescale_zero_terminal_snr(base.betas), 0)
    assert float(raw[-1]) < 1e-20
    assert math.isclose(float(z.alpha_bar[-1]), 2.0**-24)
    sig = z.discretize(10, spacing="trailing")
    assert math.isclose(float(sig[0]), 4096.0, rel_tol=1e-4) and sig[-1] == 0


def test_timestep_roundtrip() -> None:
    s = vp_linear()
    k = torch.tensor([0, 1, 10, 500, 999])
    torch.testing.assert_close(s.timestep(s.sigmas_table[k]), k.double(), atol=1e-8, rtol=0)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_discrete_spacings_pick_table_entries(spacing: str) -> None:
    s = vp_linear()
    sig = s.discretize(20, spacing=spacing)[:-1]
    assert all(bool((s.sigmas_table == v).any()) for v in sig)
    assert len(set(sig.tolist())) == 20


def test_errors_name_valid_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        make_schedule("linear")
    with pytest.raises(ValueError, match="choose one of"):
        edm().discretize(10, spacing="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        edm().discretize(0)
    with pytest.raises(ValueError, match="n <= T"):
        csdi_quad().discretize(60, spacing="trailing")
    with pytest.raises(ValueError, match="sigma_min"):
        ve(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="bad parameters"):
        make_schedule("edm", sigma_maximum=3)
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule("bad", torch.tensor([0.1, 1.5]))
