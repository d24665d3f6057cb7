"""The one condition object every network, task and guidance wrapper passes around."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Condition:
    """What a conditional denoiser is given besides ``(x, sigma)``.

    All tensors share the leading batch dimension ``B``; every field is optional.

    Fields:
      observed: ``(B, *x.shape[1:])`` observed values, zero where unobserved (CSDI's cond_obs).
      mask: ``(B, *x.shape[1:])`` conditioning mask, 1 where ``observed`` holds data.
      context: ``(B, C, ...)`` extra input concatenated by the network (previous weather states,
        low-resolution images, static fields).
      labels: ``(B,)`` integer class labels.
      scalars: ``(B, S)`` scalar conditions (lead time, ...), embedded by the network.
      drop: ``(B,)`` bool; True means "drop the conditioning" (classifier-free guidance null).
    """

    observed: Tensor | None = None
    mask: Tensor | None = None
    context: Tensor | None = None
    labels: Tensor | None = None
    scalars: Tensor | None = None
    drop: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @property
    def batch_size(self) -> int | None:
        t = self.tensors()
        return next(iter(t.values())).shape[0] if t else None

    def dropped(self, batch_size: int | None = None) -> Condition:
        """The same condition with every sample's conditioning dropped (the CFG null)."""
        b = self.batch_size if batch_size is None else batch_size
        if b is None:
            raise ValueError("Condition.dropped: cannot infer the batch size of an empty condition")
        return replace(self, drop=torch.ones(b, dtype=torch.bool, device=_device(self)))

    def drop_mask(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        """``(B,)`` bool: which samples have their conditioning dropped."""
        if self.drop is None:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        return self.drop.to(device=device, dtype=torch.bool)

    def to(self, device: torch.device | str) -> Condition:
        return replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    @staticmethod
    def cat(conds: list[Condition], batch_sizes: list[int]) -> Condition:
        """Concatenate conditions along the batch (fields present in all, ``drop`` filled in)."""
        out: dict[str, Tensor] = {}
        for f in fields(Condition):
            vals = [getattr(c, f.name) for c in conds]
            if f.name == "drop":
                if any(v is not None for v in vals):
                    out["drop"] = torch.cat(
                        [
                            c.drop_mask(b, _device(c))
                            for c, b in zip(conds, batch_sizes, strict=True)
                        ]
                    )
            elif all(v is not None for v in vals):
                out[f.name] = torch.cat(vals)
            elif any(v is not None for v in vals):
                raise ValueError(f"Condition.cat: field {f.name!r} is set in some conditions only")
        return Condition(**out)


def _device(c: Condition) -> torch.device | None:
    t = c.tensors()
    return next(iter(t.values())).device if t else None
