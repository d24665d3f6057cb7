"""CSDINet's PriSTI-style options: interpolated conditioning (against numpy's interpolation), the
geographic attention bias (great-circle distances against known values, the bias against its
formula, a large scale confining attention to one site) and the default staying the paper's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.csdi import (
    EARTH_RADIUS_KM,
    CSDINet,
    attention,
    interpolate_observed,
    site_distances,
)
from stdiff.diffusion.nets.init import build_seeded

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(obs)
    t = np.arange(obs.shape[1])
    for b in range(obs.shape[0]):
        for k in range(obs.shape[2]):
            seen = mask[b, :, k] > 0
            if seen.any():  # np.interp holds the end values constant outside
                out[b, :, k] = np.interp(t, t[seen], obs[b, seen, k])
    return out


def test_interpolation_equals_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 17, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 17, 6, generator=g) < 0.3).double()
    mask[0, :, 0] = 0  # nothing observed: zeros
    mask[1, :, 1] = 0
    mask[1, 5, 1] = 1  # one observation: constant
    mask[2, :, 2] = 1  # everything observed: unchanged
    got = interpolate_observed(obs * mask, mask).numpy()
    np.testing.assert_allclose(got, _reference((obs * mask).numpy(), mask.numpy()), atol=1e-12)
    assert not got[0, :, 0].any()
    np.testing.assert_allclose(got[1, :, 1], obs[1, 5, 1].item())
    np.testing.assert_allclose(got[2, :, 2], obs[2, :, 2].numpy())


def test_site_distances() -> None:
    coords = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 180.0], [90.0, 7.0]])
    d = site_distances(coords)
    deg = EARTH_RADIUS_KM * math.pi / 180  # 111.19 km per degree of a great circle
    assert d[0, 1].item() == pytest.approx(deg) and d[0, 2].item() == pytest.approx(deg)
    assert d[0, 3].item() == pytest.approx(180 * deg) and d[0, 4].item() == pytest.approx(90 * deg)
    torch.testing.assert_close(d, d.T)
    assert torch.all(d.diagonal() == 0)


def _geo_net(coords, **kw) -> CSDINet:
    return build_seeded(
        lambda: CSDINet(len(coords), channels=16, layers=2, heads=4, coords=coords, **kw), seed=1
    )


def test_geographic_bias_is_the_formula_and_confines_attention() -> None:
    # two sites, two variables each (features 0, 1 at site A; 2, 3 at site B), one far site
    coords = [[40.0, 116.0], [40.0, 116.0], [40.0, 116.1], [40.0, 116.1], [41.0, 117.0]]
    net = _geo_net(coords)
    d = site_distances(torch.tensor(coords, dtype=torch.float64))
    med = d[d > 1e-6].median()
    torch.testing.assert_close(net.geo_d2, ((d / med) ** 2).float())
    assert net.geo_d2[0, 1] == 0 and net.geo_d2[0, 2] > 0
    with torch.no_grad():
        net.geo_scale.fill_(math.log(1e4))  # a steep prior: only the own site is attended to
    bias = -net.geo_scale.exp()[:, None, None] * net.geo_d2
    q = k = torch.randn(3, 4, 5, 8, generator=torch.Generator().manual_seed(2))
    v = torch.eye(5).expand(3, 4, 5, 5)  # the output rows are the attention weights
    w = attention(q, k, v, bias=bias)  # (N, S, h, d): row i = weights of query i
    assert w[:, 0, :, 2:].abs().max() < 1e-6 and w[:, 4, :, :4].abs().max() < 1e-6
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5, 4))


def test_options_change_the_output_and_default_is_the_paper() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 5, generator=g)
    mask = (torch.rand(2, 9, 5, generator=g) < 0.5).float()
    cond = Condition(observed=torch.randn(2, 9, 5, generator=g) * mask, mask=mask)
    plain = build_seeded(lambda: CSDINet(5, channels=16, layers=2, heads=4), seed=1)
    keys = set(plain.state_dict())
    coords = [[40.0 + i / 10, 116.0] for i in range(5)]
    both = _geo_net(coords, interp=True)
    assert set(both.state_dict()) - keys == {"geo_scale", "geo_embed.weight", "geo_embed.bias"}
    assert both.input_projection.weight.shape[1] == 3
    for net in (plain, both):
        with torch.no_grad():
            net.output_projection2.weight.normal_(generator=torch.Generator().manual_seed(4))
    a, b = plain(x, torch.tensor([3.0, 9.0]), cond), both(x, torch.tensor([3.0, 9.0]), cond)
    assert a.shape == b.shape == (2, 9, 5) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="coords must be 5"):
        CSDINet(5, coords=[[0.0, 0.0]] * 4)
