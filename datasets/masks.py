"""Which entries of a multivariate series are given (the condition) and which are to be filled.

Training strategies (torch, explicit generator; ``observed`` is ``(B, L, K)`` of 0/1, the
result is the *conditioning* mask, a subset of ``observed``; the targets are
``observed - cond``):

* ``random`` (CSDI ``get_randmask``): per sample a ratio ``r ~ U(0, 1)`` of its observed entries
  become targets.
* ``historical`` (CSDI ``get_hist_mask``): the sample keeps only the entries also observed in
  another sample of the batch (the previous one), so the targets follow a real missing pattern.
* ``mix``: per sample, random or historical with probability one half each (CSDI's ``mix``).
* ``block``: contiguous gaps: per sample a run of ``U{1..ceil(max_block*L)}`` time steps is hidden
  for a random subset of features (ratio ``U(0, 1)``, at least one), the case sensor outages make
  (CSDI issue #17).
* ``forecast``: the last ``horizon`` time steps are the targets (CSDI's forecasting setting).

Evaluation masks (numpy): :func:`csdi_eval_mask` reproduces CSDI's test protocol exactly: the
official code seeds numpy's global generator once, visits the stays in RecordID order and for
each one hides ``int(n_obs * ratio)`` of its observed entries drawn without replacement; we draw
the same stream from a local ``RandomState(seed)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

Strategy = Literal["random", "historical", "mix", "block", "forecast"]
STRATEGIES: tuple[str, ...] = ("random", "historical", "mix", "block", "forecast")


def random_cond_mask(observed: Tensor, generator: torch.Generator) -> Tensor:
    """CSDI's random strategy: per sample a ratio ``r ~ U(0, 1)`` of the observed entries are targets."""
    b = observed.shape[0]
    flat = observed.reshape(b, -1).float()
    score = torch.rand(flat.shape, generator=generator, device=flat.device) * flat
    ratio = torch.rand(b, generator=generator, device=flat.device)
    n_target = torch.round(flat.sum(1) * ratio).long()
    order = score.argsort(dim=1, descending=True)  # observed entries first, in random order
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(b, -1))
    target = (rank < n_target[:, None]) & (flat > 0)
    return ((flat > 0) & ~target).reshape(observed.shape).to(observed.dtype)


def historical_cond_mask(observed: Tensor, pattern: Tensor | None = None) -> Tensor:
    """Keep sample ``i``'s entries that are also observed in ``pattern[i - 1]`` (CSDI's rule;
    ``pattern`` defaults to ``observed`` itself, so the previous sample of the batch)."""
    pattern = observed if pattern is None else pattern
    return observed * torch.roll(pattern, shifts=1, dims=0).to(observed.dtype)


def block_cond_mask(observed: Tensor, generator: torch.Generator, max_block: float = 0.5) -> Tensor:
    """Hide one contiguous run of time steps per sample for a random subset of features."""
    b, length, k = observed.shape
    dev = observed.device
    longest = max(1, int(np.ceil(max_block * length)))
    size = torch.randint(1, longest + 1, (b,), generator=generator, device=dev)
    start = (torch.rand(b, generator=generator, device=dev) * (length - size + 1)).long()
    t = torch.arange(length, device=dev)
    in_block = (t[None] >= start[:, None]) & (t[None] < (start + size)[:, None])  # (B, L)
    ratio = torch.rand(b, 1, generator=generator, device=dev)
    feats = torch.rand(b, k, generator=generator, device=dev) < ratio  # (B, K)
    first = torch.randint(0, k, (b,), generator=generator, device=dev)
    feats[torch.arange(b, device=dev), first] = True  # at least one feature
    hide = in_block[:, :, None] & feats[:, None, :]
    return observed * (~hide).to(observed.dtype)


def forecast_cond_mask(observed: Tensor, horizon: int) -> Tensor:
    """Condition on everything before the last ``horizon`` steps."""
    length = observed.shape[1]
    if not 0 < horizon < length:
        raise ValueError(
            f"horizon must be in [1, {length - 1}] for windows of {length} steps, got {horizon}"
        )
    keep = torch.ones_like(observed)
    keep[:, length - horizon :] = 0
    return observed * keep


def cond_mask(
    strategy: Strategy,
    observed: Tensor,
    generator: torch.Generator,
    *,
    horizon: int = 0,
    max_block: float = 0.5,
) -> Tensor:
    """The conditioning mask of ``strategy`` for ``observed`` ``(B, L, K)``."""
    if strategy == "random":
        return random_cond_mask(observed, generator)
    if strategy == "historical":
        return historical_cond_mask(observed)
    if strategy == "mix":
        rand = random_cond_mask(observed, generator)
        hist = historical_cond_mask(observed)
        pick = torch.rand(observed.shape[0], generator=generator, device=observed.device) > 0.5
        return torch.where(pick[:, None, None], rand, hist)
    if strategy == "block":
        return block_cond_mask(observed, generator, max_block)
    if strategy == "forecast":
        return forecast_cond_mask(observed, horizon)
    raise ValueError(f"mask strategy {strategy!r} is not known; choose one of {list(STRATEGIES)}")


def _hide_rows(given: np.ndarray, ratio: float, rs: np.random.RandomState) -> None:
    """Hide ``int(n_obs * ratio)`` observed entries of every row of ``given`` (in place), in
    row order, drawing from ``rs`` (CSDI's stream)."""
    for i in range(given.shape[0]):
        flat = given[i].reshape(-1)  # a view
        idx = np.flatnonzero(flat).tolist()
        hide = rs.choice(idx, int(len(idx) * ratio), replace=False) if idx else []
        flat[np.asarray(hide, dtype=np.int64)] = False


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"missing ratio must be in [0, 1), got {ratio}")


def csdi_eval_mask(observed: np.ndarray, ratio: float, seed: int = 1) -> np.ndarray:
    """CSDI's ground-truth mask: ``observed`` ``(N, L, K)`` (all stays, RecordID order) with
    ``int(n_obs * ratio)`` observed entries per stay hidden; returns the kept (given) mask."""
    _check_ratio(ratio)
    given = np.asarray(observed).astype(bool)
    _hide_rows(given, ratio, np.random.RandomState(seed))
    return given


def csdi_eval_mask_rows(
    observed, ratio: float, seed: int, rows: np.ndarray, block: int = 2048
) -> np.ndarray:
    """``csdi_eval_mask(observed, ratio, seed)[rows]`` with bounded memory: ``observed`` is any
    array sliceable along its first axis (a lazy ``xarray.DataArray`` of a store, say); it is
    read ``block`` stays at a time up to the last of ``rows`` (the stream visits every stay
    before it), and only the rows asked for are kept. ``rows`` need not be sorted."""
    _check_ratio(ratio)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), *observed.shape[1:]), dtype=bool)
    if len(rows) == 0:
        return out
    rs = np.random.RandomState(seed)
    for a in range(0, int(rows.max()) + 1, block):
        b = min(a + block, int(rows.max()) + 1)
        given = np.asarray(observed[a:b]).astype(bool)
        _hide_rows(given, ratio, rs)
        hit = np.flatnonzero((rows >= a) & (rows < b))
        out[hit] = given[rows[hit] - a]
    return out
