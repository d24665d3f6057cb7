"""One progress bar for every job: tqdm on a terminal; nothing when stderr is not a terminal
(logs, pipes: ``STDIFF_PROGRESS=1`` forces it), under CI (``CI=true``) or when off. Without a
terminal a long job still says once how long it will take (:class:`_Projection`): a scheduled
run's log then shows a config that needs hours on this machine."""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

#: seconds of work measured before the projection, and the rest that is worth a warning
PROBE_S, LONG_S = 30.0, 3600.0


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, *, enabled: bool = True, initial: int = 0, unit: str = "it") -> Any:
    """A tqdm bar (``update``, ``set_postfix``, ``close``), or a silent stand-in."""
    forced = os.environ.get("STDIFF_PROGRESS") == "1"
    if not enabled or os.environ.get("CI") == "true":
        return _NoBar()
    if not (forced or _is_terminal()):
        return _Projection(total, initial, unit)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


class _Projection(_NoBar):
    """A silent bar that, once ``PROBE_S`` seconds of work have passed, warns in one line when
    the rest at the rate so far would take more than ``LONG_S``. The rate is timed from the
    first unit's end, so start-up (loading a model, a first compile) does not inflate it."""

    def __init__(self, total: int, initial: int, unit: str) -> None:
        self.total, self.done, self.unit = total, initial, unit
        self.t0, self.said = time.perf_counter(), False
        self.first: tuple[float, int] | None = None  # (time, units done) at the first update

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.done)
            return
        if self.said or now - self.t0 < PROBE_S:
            return
        self.said = True
        each = (now - self.first[0]) / max(1, self.done - self.first[1])
        rest = each * (self.total - self.done)
        if rest > LONG_S:
            from stdiff.datasets.errors import StdiffWarning

            warnings.warn(StdiffWarning(
                f"about {each:.3g} s per {self.unit} on this machine: the {self.total - self.done} "
                f"{self.unit}s left take about {_duration(rest)}; a GPU, a smaller config or "
                f"fewer {self.unit}s shorten it"
            ), stacklevel=2)  # fmt: skip
