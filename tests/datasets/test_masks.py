"""Training and evaluation masks: subsets of the observed entries, reproducible, CSDI-exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stdiff.datasets.masks import (
    STRATEGIES,
    cond_mask,
    csdi_eval_mask,
    csdi_eval_mask_rows,
    historical_cond_mask,
)


def _observed(b: int = 64, length: int = 12, k: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(b, length, k, generator=g) < 0.5).float()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cond_mask_is_a_reproducible_subset(strategy: str) -> None:
    observed = _observed()
    a = cond_mask(strategy, observed, torch.Generator().manual_seed(1), horizon=3)
    b = cond_mask(strategy, observed, torch.Generator().manual_seed(1), horizon=3)
    assert torch.equal(a, b)
    assert bool((a <= observed).all())
    assert a.sum() < observed.sum()  # some targets everywhere


def test_random_ratio_is_uniform() -> None:
    observed = _observed(512)
    cond = cond_mask("random", observed, torch.Generator().manual_seed(1))
    frac = 1 - cond.sum((1, 2)) / observed.sum((1, 2)).clamp_min(1)
    assert 0.45 < float(frac.mean()) < 0.55  # ratio ~ U(0, 1): mean one half
    assert float(frac.min()) < 0.05 and float(frac.max()) > 0.95


def test_historical_borrows_the_previous_samples_pattern() -> None:
    observed = _observed(4)
    cond = historical_cond_mask(observed)
    for i in range(4):
        assert torch.equal(cond[i], observed[i] * observed[i - 1])


def test_mix_is_random_or_historical_per_sample() -> None:
    observed = _observed(256)
    g = torch.Generator().manual_seed(3)
    mixed = cond_mask("mix", observed, g)
    hist = historical_cond_mask(observed)
    same = [(mixed[i] == hist[i]).all().item() for i in range(256)]
    assert 0.35 < np.mean(same) < 0.65


def test_block_hides_one_contiguous_run() -> None:
    observed = torch.ones(200, 20, 6)
    cond = cond_mask("block", observed, torch.Generator().manual_seed(0), max_block=0.25)
    hidden = 1 - cond
    for i in range(200):
        feats = hidden[i].any(0)
        assert feats.any()
        times = hidden[i][:, feats].any(1).nonzero().flatten()
        assert 1 <= len(times) <= 5 and int(times[-1] - times[0]) + 1 == len(times)
        assert bool((hidden[i][times][:, feats] == 1).all())  # whole block for chosen features


def test_forecast_hides_the_horizon() -> None:
    observed = torch.ones(2, 10, 3)
    cond = cond_mask("forecast", observed, torch.Generator(), horizon=4)
    assert cond[:, :6].all() and not cond[:, 6:].any()
    with pytest.raises(ValueError, match="horizon"):
        cond_mask("forecast", observed, torch.Generator(), horizon=10)
    with pytest.raises(ValueError, match="choose one of"):
        cond_mask("nope", observed, torch.Generator())  # type: ignore[arg-type]


def test_csdi_eval_mask_matches_the_official_loop() -> None:
    rng = np.random.default_rng(0)
    observed = rng.random((30, 8, 4)) < 0.3
    observed[3] = False  # a stay with nothing observed
    ours = csdi_eval_mask(observed, 0.1, seed=1)
    # The official code, literally: global seed once, then per stay np.random.choice.
    state = np.random.get_state()  # noqa: NPY002 (the official code uses the global RNG)
    try:
        np.random.seed(1)  # noqa: NPY002
        ref = []
        for i in range(30):
            masks = observed[i].reshape(-1).copy()
            obs_indices = np.where(masks)[0].tolist()
            miss = np.random.choice(obs_indices, int(len(obs_indices) * 0.1), replace=False)  # noqa: NPY002
            try:
                masks[miss] = False
            except IndexError:  # an empty stay: float indices; the official loader skips it
                assert not obs_indices
            ref.append(masks.reshape(observed[i].shape))
    finally:
        np.random.set_state(state)  # noqa: NPY002
    np.testing.assert_array_equal(ours, np.stack(ref))
    assert ours.sum() == sum(int(o.sum()) - int(o.sum() * 0.1) for o in observed)


def test_eval_mask_rows_read_in_blocks_equal_the_whole(tmp_path) -> None:
    """``csdi_eval_mask_rows`` on a lazy store array, read a few stays at a time, equals the
    whole-array protocol at the rows asked for (in any order), and never reads past the last."""
    import xarray as xr

    rng = np.random.default_rng(1)
    observed = (rng.random((23, 6, 5)) < 0.4).astype(np.uint8)
    observed[4] = 0
    xr.Dataset({"observed_mask": (("stay", "time", "feature"), observed)}).to_zarr(
        tmp_path / "s.zarr", encoding={"observed_mask": {"chunks": (3, 6, 5)}}
    )
    lazy = xr.open_zarr(tmp_path / "s.zarr")["observed_mask"]
    rows = np.array([17, 2, 4, 9, 0])
    whole = csdi_eval_mask(observed, 0.25, seed=3)
    for block in (1, 4, 100):
        np.testing.assert_array_equal(csdi_eval_mask_rows(lazy, 0.25, 3, rows, block), whole[rows])

    class Guard:  # fails if a stay after the last row asked for is read
        shape = observed.shape

        def __getitem__(self, s):
            assert s.stop <= 18
            return observed[s]

    csdi_eval_mask_rows(Guard(), 0.25, 3, rows, block=5)
    assert csdi_eval_mask_rows(lazy, 0.25, 3, np.array([], int)).shape == (0, 6, 5)


def test_stay_split_of_a_lazy_mask_equals_the_numpy_one(tmp_path) -> None:
    import xarray as xr

    from stdiff.datasets.splits import csdi_stay_split, stays_with_data

    rng = np.random.default_rng(2)
    observed = (rng.random((40, 4, 3)) < 0.2).astype(np.uint8)
    observed[[3, 17]] = 0
    xr.Dataset({"observed_mask": (("stay", "time", "feature"), observed)}).to_zarr(
        tmp_path / "s.zarr", encoding={"observed_mask": {"chunks": (7, 4, 3)}}
    )
    lazy = xr.open_zarr(tmp_path / "s.zarr")["observed_mask"]
    a, b = csdi_stay_split(observed, 0), csdi_stay_split(lazy, 0)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert 3 not in np.concatenate([b.train, b.valid, b.test])
    for block in (1, 30, 1000):  # 12 bytes per stay: one, two and all stays per read
        np.testing.assert_array_equal(
            stays_with_data(lazy, block_bytes=block), observed.reshape(40, -1).any(1)
        )


def test_stay_split_reads_the_stored_flags_not_the_mask(tmp_path) -> None:
    import xarray as xr

    from stdiff.datasets.errors import DataError
    from stdiff.datasets.splits import HAS_DATA, csdi_stay_split

    rng = np.random.default_rng(3)
    observed = (rng.random((30, 4, 3)) < 0.2).astype(np.uint8)
    observed[[0, 11, 29]] = 0
    has = observed.reshape(30, -1).any(1).astype(np.uint8)
    ds = xr.Dataset({"observed_mask": (("stay", "time", "feature"), observed),
                     HAS_DATA: ("stay", has)})  # fmt: skip
    want = csdi_stay_split(observed, 1)
    without_mask = ds.drop_vars("observed_mask")  # the flags alone suffice: nothing is scanned
    without_mask = without_mask.assign_coords(stay=np.arange(30))
    for got in (csdi_stay_split(ds, 1), csdi_stay_split(without_mask, 1),
                csdi_stay_split(ds.drop_vars(HAS_DATA), 1)):  # fmt: skip
        for part in ("train", "valid", "test"):
            np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
    with pytest.raises(DataError, match=r"stay_has_data.*ingest the source again"):
        csdi_stay_split(ds.drop_vars(HAS_DATA).assign({HAS_DATA: ("other", has)}), 0)
