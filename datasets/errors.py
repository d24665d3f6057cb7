"""One error type for bad input data: a single line naming the file (or parameter) and the fault."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Malformed or unusable input. ``str(err)`` is one line: ``"<file>: <what is wrong>"``."""

    def __init__(self, where: str | Path, what: str) -> None:
        self.where, self.what = str(where), what
        super().__init__(f"{where}: {what}")


def one_line(err: BaseException) -> str:
    """An exception as one line: ``Type: message`` with whitespace runs collapsed."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


class StdiffWarning(UserWarning):
    """Something the user should know that does not stop the job (samples clipped to the data's
    range, ...); the CLI prints it as one ``stdiff: warning:`` line."""
