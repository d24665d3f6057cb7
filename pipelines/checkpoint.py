"""Checkpoints that never unpickle code: tensors in safetensors, config and metadata as JSON.

A checkpoint is one ``.safetensors`` file: the model state (``model.*``), optional extra tensor
groups (``ema.*``, ...) and, in the safetensors header metadata, the resolved config and any
JSON-serialisable metadata (normalisation statistics, step, versions). Written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from datasets.atomic import atomic_path


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
    return groups, json.loads(header.get("config", "{}")), json.loads(header.get("metadata", "{}"))
