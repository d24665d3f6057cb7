"""The progress bar's stand-in without a terminal: one warning when a job will take long."""

from __future__ import annotations

import time
import warnings

import pytest

from stdiff.datasets.errors import StdiffWarning
from stdiff.pipelines.engine import progress


def test_long_job_without_a_terminal_warns_once(monkeypatch) -> None:
    """After the probe time, a projected rest above the limit gives one warning naming the
    rate, the units left and the time; a short rest, CI or a bar turned off give none."""
    monkeypatch.delenv("STDIFF_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(progress, "_is_terminal", lambda: False)
    monkeypatch.setattr(progress, "PROBE_S", 0.01)
    monkeypatch.setattr(progress, "LONG_S", 60.0)
    bar = progress.progress_bar(100_000, initial=10, unit="step")
    time.sleep(0.5)
    bar.update()  # the first unit, start-up included: not timed
    time.sleep(0.02)
    with pytest.warns(
        StdiffWarning, match=r"s per step on this machine: the 99988 steps left"
    ) as w:
        bar.update()
    rate = float(str(w[0].message).split("about ")[1].split(" s per")[0])
    assert rate < 0.2  # the 0.5 s start-up is not in it
    with warnings.catch_warnings():
        warnings.simplefilter("error", StdiffWarning)
        time.sleep(0.02)
        bar.update()  # said once
        short = progress.progress_bar(3, unit="init")
        short.update()
        time.sleep(0.02)
        short.update()  # 1 init left at about 0.02 s: well under the limit
        monkeypatch.setenv("CI", "true")
        for quiet in (
            progress.progress_bar(100_000),
            progress.progress_bar(100_000, enabled=False),
        ):
            quiet.update()
            time.sleep(0.02)
            quiet.update()
