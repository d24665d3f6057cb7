"""``trim_host_memory``: the jobs' guard against glibc's heap growing through long CPU sampling
runs (BENCHMARKS weather-crps-distill: NCEP forecasts passed 17.7 GB without it)."""

from __future__ import annotations

import platform

import pytest
import torch

from stdiff.pipelines.engine.device import _libc_trim, trim_host_memory


def _anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or _libc_trim() is None, reason="needs glibc")
def test_trim_returns_freed_heap_pages_to_the_os() -> None:
    """Activations freed below one that lives on (the heap's top is pinned, so ``free`` cannot
    shrink it): their pages stay resident until a trim gives them back."""
    trim_host_memory()
    base = _anon_mb()
    many = [torch.ones(16_000) for _ in range(500)]  # 64 kB each: heap, not mmap; 32 MB in all
    pinned = torch.ones(16_000)
    del many
    held = _anon_mb() - base
    trim_host_memory()
    after = _anon_mb() - base
    assert pinned.sum() == 16_000
    assert held > 20 and after < held / 2, (held, after)


def test_trim_is_a_no_op_without_glibc(monkeypatch) -> None:
    import stdiff.pipelines.engine.device as dev

    monkeypatch.setattr(dev, "_libc_trim", lambda: None)
    dev.trim_host_memory()  # nothing to call, nothing raised
