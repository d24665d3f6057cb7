"""One progress bar for every job: tqdm on a terminal; nothing when stderr is not a terminal
(logs, pipes: ``STDIFF_PROGRESS=1`` forces it), under CI (``CI=true``) or when off."""

from __future__ import annotations

import os
import sys
from typing import Any


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
    if not enabled or os.environ.get("CI") == "true" or not (forced or _is_terminal()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)
