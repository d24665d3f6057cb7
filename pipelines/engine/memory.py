"""Will one training step fit in memory? Measured on the dry run, refused before any folder exists.

A network that is too large for its data (CSDI's feature attention is quadratic in the number of
features: 1,200 columns take about 1.2 GB per sample of a 24-step window) would otherwise be
killed by the operating system in the middle of its first step, leaving a run folder and no
message. :class:`SavedActivations` counts the bytes autograd keeps for the backward pass while
the dry run evaluates the loss on a few items (in training mode, under the training autocast,
so dropout masks and gradient checkpointing count as they will); :func:`check_step_memory` scales
that to ``loop.batch_size`` and compares it with the memory the device has free. On the CPU the
dry run itself runs under :func:`allocation_limit`, so a network that cannot take even those few
items fails there with an allocation error (:func:`is_allocation_error`) instead of being killed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from stdiff.datasets.outputs import available_memory

#: resident memory a training step adds per sample, over the bytes it saves for backward (the
#: gradients of the largest activations exist beside them in the backward pass, and the C heap
#: does not reuse all it freed): measured 1.3 (one step) to 2.4 (from the second step on) on
#: CSDI's CPU attention at 600-1,200 features; an estimate, so only gross excess is refused
STEP_OVERHEAD = 2.0
#: weights' gradients, the EMA copy and AdamW's two moments, in units of the weights
STATE_COPIES = 4


class SavedActivations:
    """Context manager: the bytes autograd saves for backward inside it (``.nbytes``), each
    storage once, the module's own parameters left out."""

    def __init__(self, module: nn.Module) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self._params:
            self._seen[s.data_ptr()] = s.nbytes()
        return t

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (CUDA: the driver's free memory; CPU: MemAvailable), or None."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory() if device.type == "cpu" else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_step_memory(
    per_item: float, batch_size: int, module: nn.Module, device: torch.device
) -> None:
    """Refuse (ValueError naming ``loop.batch_size``) a training step whose activations
    (``per_item`` bytes saved for backward per sample, times ``batch_size``) and optimizer state
    would not fit in the memory free on ``device``."""
    free = free_memory(device)
    if free is None or per_item <= 0:
        return
    state = STATE_COPIES * sum(p.numel() * p.element_size() for p in module.parameters())
    per_sample = STEP_OVERHEAD * per_item
    need = per_sample * batch_size + state
    if need <= free:
        return
    fits = int((free - state) // per_sample)
    advice = (
        f"lower loop.batch_size to at most {fits} (raise optim.grad_accum to keep the "
        "effective batch)"
        if fits >= 1
        else "even one sample does not fit: lower data.window, the number of features or "
        "variables, the image size, or model.params (channels, layers, hidden)"
    )
    raise ValueError(
        f"loop.batch_size={batch_size}: one training step needs about {_gib(need)} "
        f"({_gib(per_sample)} per sample) but {_gib(free)} is free on {device.type}; {advice}, "
        "or use a machine with more memory"
    )


@contextlib.contextmanager
def allocation_limit(device: torch.device) -> Iterator[None]:
    """On the CPU (Linux), cap this process's address space at its current size plus the free
    memory for the duration, so an allocation beyond what the machine can give fails with an
    error instead of the kernel killing the process; elsewhere a no-op."""
    try:
        import resource

        size = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text()
                    .splitlines() if ln.startswith("VmSize:"))  # fmt: skip
        old = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, StopIteration, ValueError):
        size = old = None
    free = free_memory(device) if device.type == "cpu" else None
    if size is None or old is None or free is None:
        yield
        return
    cap = size + free if old[1] == resource.RLIM_INFINITY else min(size + free, old[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def is_allocation_error(e: BaseException) -> bool:
    """A failed host or device allocation (``MemoryError``, torch's out-of-memory errors)."""
    text = str(e)
    return isinstance(e, MemoryError | torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError)
        and ("can't allocate memory" in text or "DefaultCPUAllocator" in text)
    )


def too_large(batch_size: int, n: int, device: torch.device) -> ValueError:
    """The error for a dry run of ``n`` samples that did not fit in memory."""
    free = free_memory(device)
    room = f" ({_gib(free)} free on {device.type})" if free is not None else ""
    return ValueError(
        f"loop.batch_size={batch_size}: a training step on {n} sample(s) did not fit in the "
        f"memory this process may use{room}; lower data.window, the number of features or variables, the image "
        "size, or model.params (channels, layers, hidden), or use a machine with more memory"
    )
