"""Checkpoints that never unpickle code: tensors in safetensors, config and metadata as JSON.

A checkpoint is one ``.safetensors`` file: the model state (``model.*``), optional extra tensor
groups (``ema.*``, ...) and, in the safetensors header metadata, the resolved config and any
JSON-serialisable metadata (normalisation statistics, step, versions). Written atomically.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from stdiff.datasets.atomic import atomic_path


def save_checkpoint(
    path: str | Path,
    groups: dict[str, dict[str, torch.Tensor]],
    config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save tensor ``groups`` (e.g. ``{"model": state_dict}``) with ``config`` and ``metadata``."""
    flat = {
        f"{g}.{k}": v.detach().cpu().contiguous() for g, sd in groups.items() for k, v in sd.items()
    }
    header = {"config": json.dumps(config), "metadata": json.dumps(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)
    return Path(path)


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """Load ``(groups, config, metadata)``; a missing or corrupt file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        flat = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    try:
        config, metadata = (json.loads(header.get(k) or "{}") for k in ("config", "metadata"))
    except ValueError as e:
        raise ValueError(
            f"{path}: damaged checkpoint header (its JSON does not parse: {e})"
        ) from None
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{path}: damaged checkpoint header (config/metadata are not mappings)")
    return groups, config, metadata


def tensor_group(groups: dict[str, dict[str, torch.Tensor]], name: str, path: str | Path):
    """The tensor group ``name`` (``model``, ``ema``) of a loaded checkpoint, or a ValueError
    naming the file and the groups it has."""
    if name not in groups:
        raise ValueError(
            f"{path}: checkpoint has no {name!r} weights (it has {sorted(groups) or 'none'}); "
            "it is damaged or not a stdiff checkpoint"
        )
    return groups[name]


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``module.load_state_dict(state)``; missing, unexpected or mis-shaped tensors become one
    ValueError naming the checkpoint file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
        raise ValueError(
            f"{path}: weights do not fit the network its config builds ({detail[:300]})"
        ) from None


# --- training checkpoints: folders of safetensors + JSON ------------------------------------
#
#    <run>/checkpoints/step_000000120/
#        weights.safetensors    groups "model.*" and "ema.*"; header: resolved config, metadata
#        optimizer.safetensors  every tensor of the optimizer state ("state.<param>.<key>")
#        state.json             step, optimizer param groups and scalars, LR-scheduler state
#
# Folders appear only by rename (atomic); foreign .pt files go through load_torch_weights, which
# uses torch.load(weights_only=True) and refuses pickles that would run code.


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{pid}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = val
    for name, val in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/step_<step>`` atomically and return its path."""
    final = Path(run_dir) / "checkpoints" / f"step_{step:09d}"
    tensors, opt_meta = _optimizer_split(optimizer)
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        save_checkpoint(tmp / "weights.safetensors", {"model": model, "ema": ema}, config, metadata)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``step_*`` folder under ``<run_dir>/checkpoints`` (or ``run_dir`` itself if it is one)."""
    run_dir = Path(run_dir)
    if (run_dir / "state.json").is_file():
        return run_dir
    found = (
        sorted((run_dir / "checkpoints").glob("step_*"))
        if (run_dir / "checkpoints").is_dir()
        else []
    )
    return found[-1] if found else None


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """``{"model", "ema", "optimizer", "scheduler", "step", "config", "metadata"}`` from a folder."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise ValueError(f"{path}: not a training checkpoint (no state.json)")
    weights = path / "weights.safetensors"
    groups, config, metadata = load_checkpoint(weights)
    try:
        state = json.loads((path / "state.json").read_text())
        opt = _optimizer_join(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        scheduler, step = state["scheduler"], int(state["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise ValueError(
            f"{path}: damaged training checkpoint ({type(e).__name__}: {e}); resume from an "
            "earlier step_* folder or start a new run"
        ) from None
    return {
        "model": tensor_group(groups, "model", weights),
        "ema": tensor_group(groups, "ema", weights),
        "optimizer": opt,
        "scheduler": scheduler,
        "step": step,
        "config": config,
        "metadata": metadata,
    }


def load_torch_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A foreign ``torch.save`` state dict, loaded with ``weights_only=True``.

    A pickle that would construct arbitrary objects (run code) is refused with ``ValueError``.
    """
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: refused: not a plain tensor checkpoint ({first})") from None
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: refused: expected a dict of tensors")
    return sd
