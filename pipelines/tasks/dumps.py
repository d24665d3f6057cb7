"""Periodic sample dumps during training (``loop.sample_every``): evidence that samples are
plausible while the loss falls. Each task's dump (``Task.sample_dump``, in its module) draws from
the EMA denoiser with its own fixed generators (the same noise at every dump, so dumps are
comparable) and writes a PNG under ``<run>/samples/`` with the helpers here.
"""

from __future__ import annotations

from pathlib import Path

from stdiff.datasets.atomic import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    pyplot().close(fig)
