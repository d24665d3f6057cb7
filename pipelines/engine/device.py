"""Device selection and fast-math settings: CUDA when present (TF32, bf16 autocast), else CPU."""

from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Literal

import torch

DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(name: DeviceName = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={name!r} is not valid; choose one of ['auto', 'cpu', 'cuda']")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # process-wide backend flags, not RNG state
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (when ``enabled``); a no-op context on the CPU."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def _libc_trim():
    """glibc's ``malloc_trim``, or None (another C library, another OS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_host_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``). On the CPU, a long
    sampling job frees and re-allocates activations of many sizes; glibc keeps what it freed
    and its resident memory grew without bound (NCEP, 8 members, a year of initial times: past
    17.7 GB when stopped; a 976 MB peak with a trim per rollout step). Jobs call this once per
    unit of work (a
    rollout step, a chunk of windows, a batch of images); no-op where glibc is absent."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)
