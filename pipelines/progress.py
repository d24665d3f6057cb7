"""One progress bar for every job: tqdm on a terminal, nothing under CI (``CI=true``) or when off."""

from __future__ import annotations

import os
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, *, enabled: bool = True, initial: int = 0, unit: str = "it") -> Any:
    """A tqdm bar (``update``, ``set_postfix``, ``close``), or a silent stand-in."""
    if not enabled or os.environ.get("CI") == "true":
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)
