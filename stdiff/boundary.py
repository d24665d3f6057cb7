"""The one error boundary of the entry points.

Every command runs inside :func:`run`. What a user can fix becomes one line on stderr that names
the file, key or flag and says what to do, with exit code 2:

* bad flags (click's usage errors), bad configs and bad data (``ValueError``, which
  ``DataError`` and every config error are), non-finite samples (``FloatingPointError``);
* operating-system errors (disk full, read-only or missing paths, permissions): ``OSError``
  names its file, and the advice depends on its errno;
* running out of memory (``MemoryError``, ``torch.OutOfMemoryError``).

Anything else is a bug in stdiff: one line saying so and where the full traceback was written,
exit 1 (``--debug`` or ``STDIFF_DEBUG=1`` shows the traceback instead). Ctrl-C exits 130.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

USER_ERROR, INTERNAL_ERROR, INTERRUPTED = 2, 1, 130

_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or choose another output path",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another output path",
    errno.EROFS: "the file system is read-only: choose a writable output path",
    errno.EACCES: "permission denied: choose a path you may write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose another path or fix its permissions",
    errno.ENOENT: "not found: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "is a folder where a file was expected: check the path",
    errno.EEXIST: "already exists: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower the batch size",
}


def os_error_line(e: OSError) -> str:
    """``"<file>: <what happened> (<what to do>)"`` for an operating-system error."""
    where = e.filename if e.filename is not None else "input/output"
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    what = e.strerror or str(e) or type(e).__name__
    advice = _ADVICE.get(e.errno or -1)
    return f"{where}: {what}" + (f" ({advice})" if advice and advice != what else "")


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return " ".join(lines) if lines else "(no message)"


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ()))


def _crash_log(exc: BaseException) -> Path | None:
    """Write the traceback to a log file; its path, or None when nothing could be written."""
    base = os.environ.get("STDIFF_LOG_DIR") or Path.home() / ".cache" / "stdiff" / "logs"
    text = "".join(traceback.format_exception(exc))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (Path(base), Path(os.environ.get("TMPDIR", "/tmp"))):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(" ".join(sys.argv) + "\n\n" + text)
            return folder / name
        except OSError:
            continue
    return None


def _click_classes(name: str) -> tuple[type, ...]:
    """``name`` from typer's vendored click and from click itself, where each is installed."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def classify(e: BaseException) -> tuple[int, str]:
    """(exit code, the one line to print) for an exception that reached the boundary."""
    if isinstance(e, _click_classes("UsageError")):
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "stdiff"
        return USER_ERROR, f"{cmd}: {one_line(e.format_message())} (see {cmd} --help)"
    if isinstance(e, _click_classes("ClickException")):
        return USER_ERROR, one_line(e.format_message())
    if isinstance(e, (KeyboardInterrupt, *_click_classes("Abort"))):
        return INTERRUPTED, "interrupted; outputs are published only when complete, rerun to resume"
    if _is_oom(e):
        return USER_ERROR, (
            f"out of memory ({one_line(str(e))[:200] or 'MemoryError'}): lower members, "
            "member_chunk, batch_size or eval_batch, or use a machine with more memory"
        )
    if isinstance(e, OSError):
        return USER_ERROR, os_error_line(e)
    if isinstance(e, ValueError | FloatingPointError):
        return USER_ERROR, one_line(str(e))
    return INTERNAL_ERROR, f"internal error ({type(e).__name__}: {one_line(str(e))[:300]})"


def _clear_progress_bars() -> None:
    """Take open progress bars off the terminal, so the error line stands alone."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or []):
        try:
            bar.leave = False
            bar.close()
        except Exception:  # a broken bar must not hide the error
            continue


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """stdiff's own warnings as one line; others as Python shows them."""
    if getattr(category, "__name__", "") == "StdiffWarning":
        _clear_progress_bars()
        print(f"stdiff: warning: {one_line(str(message))}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def run(fn: Callable[[], int | None], debug: bool = False) -> int:
    """Call ``fn`` inside the boundary; returns the exit code (never raises but SystemExit)."""
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        code = fn()
        return int(code or 0)
    except SystemExit:
        raise
    except BaseException as e:  # the boundary: everything becomes an exit code and one line
        _clear_progress_bars()
        code, line = classify(e)
        if code == INTERNAL_ERROR:
            if debug:
                traceback.print_exception(e)
            else:
                log = _crash_log(e)
                where = f"traceback in {log}" if log else "no traceback could be written"
                line += f"; this is a bug in stdiff: {where} (rerun with --debug to show it)"
        print(f"stdiff: error: {line}", file=sys.stderr, flush=True)
        return code
    finally:
        warnings.showwarning = shown
