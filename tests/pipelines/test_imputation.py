"""`stdiff impute`: the job end to end on a small trained CSDI, chunk invariance, forecasting
mode, scores consistent with the stored ensemble, and bad input refused before any output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store
from stdiff.pipelines.jobs import impute_core
from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation, score_imputation


def _impute(store: Path, run: Path, out: Path, *extra: str):
    args = ["impute", "--checkpoint", str(run), "--data", str(store), "--out", str(out)]
    return CliRunner().invoke(app, [*args, *extra])


def test_impute_cli_end_to_end(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "imp.zarr"
    res = _impute(
        store, run, out, "--sampler", "ddim", "--steps", "5", "--members", "9",
        "--set", "eval_ratio=0.2", "--set", "split=all",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "CRPS" in res.output and "5 steps (5 evaluations)" in res.output
    ds = xr.open_zarr(out, consolidated=False)
    src = open_store(store)
    assert dict(ds["samples"].sizes) == {"stay": 40, "member": 9, "time": 12, "feature": 4}
    assert list(ds["feature"].values) == [f"f{i}" for i in range(4)]
    given = ds["cond_mask"].values.astype(bool)
    s = ds["samples"].values
    np.testing.assert_array_equal(
        s[:, 0][given], np.nan_to_num(src["values"].values)[given]
    )  # given entries keep their values
    assert np.isfinite(s).all()
    ev = ds["eval_mask"].values.astype(bool)
    obs = src["observed_mask"].values.astype(bool)
    assert not (ev & given).any() and ((ev | given) == obs).all()
    q = ds["quantiles"].values
    assert (np.diff(q, axis=1) >= -1e-6).all()  # quantiles increase with the level
    # the stored metrics are the scores of the stored ensemble
    result = json.loads((tmp_path / "imp.zarr.metrics.json").read_text())
    mean, std = (src[f"values_{k}"].values for k in ("mean", "std"))
    again = score_imputation(ds, mean, std)
    assert again["crps"] == pytest.approx(result["metrics"]["crps"], rel=1e-6)
    assert sum(result["metrics"]["rank_histogram"]) == result["metrics"]["eval_points"] == ev.sum()
    assert np.isfinite(result["metrics"]["crps"]) and result["metrics"]["crps"] > 0


def test_members_do_not_depend_on_chunking(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    base = {"checkpoint": str(run), "data": str(store), "sampler": "ddpm", "steps": 4,
            "members": 6, "device": "cpu", "max_stays": 5}  # fmt: skip
    a = run_imputation(
        ImputeConfig(out=str(tmp_path / "a.zarr"), member_chunk=6, batch_size=5, **base),
        progress=False,
    )
    b = run_imputation(
        ImputeConfig(
            out=str(tmp_path / "b.zarr"), member_chunk=4, batch_size=2, eval_batch=3, **base
        ),
        progress=False,
    )
    sa = xr.open_zarr(a["out"], consolidated=False)["samples"].values
    sb = xr.open_zarr(b["out"], consolidated=False)["samples"].values
    np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-4)  # float sums differ with batch size
    assert np.std(sa, axis=1).max() > 0  # members differ


def test_forecast_mode_samples_the_horizon(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    cfg = ImputeConfig(
        checkpoint=str(run), data=str(store), out=str(tmp_path / "fc.zarr"), sampler="dpmpp_2m",
        steps=5, members=5, mode="forecast", horizon=3, device="cpu",
    )  # fmt: skip
    result = run_imputation(cfg, progress=False)
    ds = xr.open_zarr(result["out"], consolidated=False)
    cond, ev, obs = (ds[k].values.astype(bool) for k in ("cond_mask", "eval_mask", "observed_mask"))
    assert not cond[:, -3:].any() and (cond[:, :-3] == obs[:, :-3]).all()
    assert (ev[:, -3:] == obs[:, -3:]).all() and not ev[:, :-3].any()
    assert np.isfinite(result["metrics"]["crps"])


def test_bad_input_is_refused_and_writes_nothing(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "bad.zarr"
    # other features than the checkpoint's
    other = open_store(store).load().assign_coords(feature=np.array(["a", "b", "c", "d"], object))
    other.to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    res = _impute(tmp_path / "other.zarr", run, out)
    assert res.exit_code == 2 and "features differ from the checkpoint" in res.output
    # a stay with nothing observed
    empty = open_store(store).load()
    empty["observed_mask"][3] = 0
    empty["values"][3] = np.nan
    empty.to_zarr(tmp_path / "empty.zarr", zarr_format=3, consolidated=False)
    res = _impute(tmp_path / "empty.zarr", run, out, "--set", "split=all", "--steps", "2")
    assert res.exit_code == 2 and "1 stay(s) have no observed values" in res.output
    for bad, msg in [
        (["--sampler", "magic"], "sampler 'magic' is not known"),
        (["--members", "0"], "members must be at least 1"),
        (["--set", "eval_ratio=1.5"], "eval_ratio must be in [0, 1)"),
        (["--set", "mode=forecast"], "horizon must be at least 1"),
    ]:
        res = _impute(store, run, out, *bad)
        assert res.exit_code == 2 and msg in res.output, res.output
    res = _impute(store, tmp_path / "nowhere", out)
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    assert not out.exists() and not list(tmp_path.glob(".bad.zarr*"))


def test_non_finite_samples_publish_nothing(tmp_path: Path, trained_csdi, monkeypatch) -> None:
    store, run = trained_csdi
    monkeypatch.setattr(impute_core, "sample", lambda *a, **k: torch.full(a[1], float("nan")))
    cfg = ImputeConfig(checkpoint=str(run), data=str(store), out=str(tmp_path / "n.zarr"),
                       steps=2, members=2, device="cpu")  # fmt: skip
    with pytest.raises(FloatingPointError, match="not published"):
        run_imputation(cfg, progress=False)
    assert not (tmp_path / "n.zarr").exists() and not list(tmp_path.glob(".n.zarr*"))


class _ConditionalGaussian:
    """The exact conditional denoiser of x ~ N(mu, S) in R^(L*K): at the targets (mask 0) the
    posterior mean of x_T given the noisy x_T and the observed x_O; at observed entries x_O."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor) -> None:
        from stdiff.diffusion.schedules import edm

        self.mu, self.cov, self.schedule = mu, cov, edm()

    def __call__(self, x, sigma, cond):
        b = x.shape[0]
        flat, obs = x.reshape(b, -1).double(), cond.observed.reshape(b, -1).double()
        m = cond.mask.reshape(b, -1).bool()
        assert bool((m == m[0]).all())  # one stay: the same mask in every row
        o, t = m[0], ~m[0]
        s_oo, s_to = self.cov[o][:, o], self.cov[t][:, o]
        mu_c = self.mu[t] + (obs[:, o] - self.mu[o]) @ torch.linalg.solve(s_oo, s_to.T)  # (B, T)
        cov_c = self.cov[t][:, t] - s_to @ torch.linalg.solve(s_oo, s_to.T)
        s2 = sigma.reshape(-1, 1, 1).double() ** 2
        gain = cov_c @ torch.linalg.inv(cov_c + s2 * torch.eye(int(t.sum()), dtype=torch.float64))
        out = torch.empty_like(flat)
        out[:, t] = mu_c + (gain @ (flat[:, t] - mu_c)[..., None])[..., 0]
        out[:, o] = obs[:, o]
        return out.reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 200), ("dpmpp_2m", 32)])
def test_imputation_draws_the_exact_conditional(sampler: str, steps: int) -> None:
    """With the exact conditional denoiser of a Gaussian, the members at the hidden entries have
    the closed-form conditional mean and covariance (the whole conditioning path: masks,
    per-member generators, member chunks)."""
    from stdiff.pipelines.jobs.impute_core import draw_members as _draw

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov, mu = (
        a @ a.T / 6 + 0.3 * torch.eye(6, dtype=torch.float64),
        torch.randn(6, generator=g, dtype=torch.float64),
    )
    x = (mu + torch.linalg.cholesky(cov) @ torch.randn(6, generator=g, dtype=torch.float64)).float()
    mask = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.float32)  # (L=3, K=2) flattened
    den = _ConditionalGaussian(mu, cov)
    cfg = ImputeConfig(
        checkpoint="-",
        data="-",
        out="-",
        sampler=sampler,
        steps=steps,
        members=3000,
        member_chunk=1500,
        eval_batch=1500,
    )
    s = _draw(
        den, x.reshape(1, 3, 2), mask.reshape(1, 3, 2), np.array([0]), cfg, torch.device("cpu")
    )
    t = ~mask.bool()
    got = s[0].reshape(3000, 6)[:, t].double()
    o = mask.bool()
    s_to = cov[t][:, o]
    mu_c = mu[t] + s_to @ torch.linalg.solve(cov[o][:, o], x[o].double() - mu[o])
    cov_c = cov[t][:, t] - s_to @ torch.linalg.solve(cov[o][:, o], s_to.T)
    se = (cov_c.diagonal() / 3000).sqrt()
    assert ((got.mean(0) - mu_c).abs() < 5 * se + 0.01).all(), (got.mean(0), mu_c)
    top = float(cov_c.diagonal().max())  # 5 Monte-Carlo standard errors + 2 % allowance
    torch.testing.assert_close(
        torch.cov(got.T), cov_c, atol=5 * (2 / 3000) ** 0.5 * top + 0.02 * top, rtol=0
    )
