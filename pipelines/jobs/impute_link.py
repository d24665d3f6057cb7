"""Members linked across window changes of a stitched series (``stdiff impute``, ``link_members``).

Central stitching takes each step from one window and the windows' members are independent
draws, so member ``m`` of one window has nothing to do with member ``m`` of the next: a member
trajectory jumps where the owning window changes (on Beijing at 400 training steps, 1.5x the
step elsewhere). The set of values at every step is what the scores see, and it is right; only
the labels are arbitrary. So before the output is published, the members of every window are
relabelled, window after window: at each change, the new window's members are assigned to the
labels of the previous step by the assignment that minimises the summed squared step, each
feature in units of its training std (:func:`link_order`, the Hungarian method). Every step
keeps exactly its values (CRPS, quantiles, coverage and rank histograms are unchanged, bitwise)
and the member trajectories continue across the seams as far as the members allow: this is
the ensemble-reordering idea (the Schaake shuffle and ensemble copula coupling reorder
ensemble members against a template; here the template is the previous step).

Entries given to the model are the truth in every member, so they add the same amount to every
pairing and do not steer the assignment.

The relabelled samples are written to a second array beside ``samples``, which is then swapped
in by two renames inside the partial store; a run killed at any point redoes the pass from the
untouched draws or finishes the swap (:func:`link_members` is idempotent), and the array's
``member_order`` attribute records that it was done.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

LINKED, OLD = "samples_linked", "samples_unlinked"
ATTR = "member_order"


def rename(src: Path, dst: Path) -> None:
    """An atomic rename inside the store (its own name, so that tests can interrupt it)."""
    os.replace(src, dst)


def link_order(prev: np.ndarray, nxt: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(M,)`` indices into ``nxt`` ``(M, K)`` such that ``nxt[order]`` continues ``prev``
    ``(M, K)`` with the least summed squared step ``sum(((prev - nxt[order]) * scale) ** 2)``."""
    a, b = prev * scale, nxt * scale
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    rows, cols = linear_sum_assignment(cost.astype(np.float64))
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order


def relabel(samples: np.ndarray, window: np.ndarray, scale: np.ndarray, state=None) -> tuple:
    """``samples`` ``(M, n, K)`` with every window's members relabelled (see the module
    docstring); ``window`` ``(n,)`` identifies each step's window. ``state``: ``(order, last
    window, last relabelled step)`` carried from the steps before these, or None at the start.
    Returns the relabelled samples and the state after them."""
    out = np.empty_like(samples)
    m = samples.shape[0]
    order, last, prev = state if state is not None else (np.arange(m), None, None)
    starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
    for a, b in zip(starts, [*starts[1:], len(window)], strict=True):
        if prev is not None and window[a] != last:
            order = link_order(prev, samples[:, a], scale)
        out[:, a:b] = samples[order, a:b]
        last, prev = window[a], out[:, b - 1]
    return out, (order, last, prev)


def link_members(path: Path, std: np.ndarray) -> None:
    """Relabel the members of the series output store at ``path`` (unpublished, unconsolidated)
    chunk by chunk along time; idempotent: a killed pass is redone or its swap finished."""
    import zarr

    path = Path(path)
    src, linked, old = path / "samples", path / LINKED, path / OLD
    if not src.exists() and linked.exists():  # killed between the two renames
        rename(linked, src)
    if ATTR in zarr.open_array(str(src), mode="r").attrs:
        shutil.rmtree(old, ignore_errors=True)
        return
    shutil.rmtree(linked, ignore_errors=True)
    linked.mkdir()
    shutil.copyfile(src / "zarr.json", linked / "zarr.json")  # same shape, chunks, codecs
    samples = zarr.open_array(str(src), mode="r")
    dst = zarr.open_array(str(linked), mode="r+")
    window = zarr.open_array(str(path / "window_start"), mode="r")[:]
    scale = 1.0 / np.where(np.asarray(std) > 0, np.asarray(std), 1.0).astype(np.float64)
    step, state = samples.chunks[1], None
    for t0 in range(0, samples.shape[1], step):
        block, state = relabel(samples[:, t0 : t0 + step], window[t0 : t0 + step], scale, state)
        dst[:, t0 : t0 + step] = block
    dst.attrs[ATTR] = "members linked across window changes (least squared step)"
    rename(src, old)
    rename(linked, src)
    shutil.rmtree(old)
