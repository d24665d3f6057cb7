"""stdiff: conditional spatiotemporal diffusion models (imputation, ensemble forecasts,
reconstruction, generation) as jobs.

The one import name of the project: the repository's folders install as ``stdiff.diffusion``,
``stdiff.datasets``, ``stdiff.pipelines`` and ``stdiff.flows``. The Python API (``stdiff.load``,
``stdiff.train``) is imported lazily, so ``import stdiff.diffusion`` needs torch, timm and einops
only (a bare GPU box has no xarray, zarr or Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# In a checkout that is not installed (a GPU box given a copy of the tree), the subpackages are
# the repository's top-level folders beside this one: let the import system find them there. An
# installed copy (wheel or editable) finds them through the package-dir mapping instead.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "diffusion" / "samplers.py").is_file():
    __path__.append(str(_ROOT))  # type: ignore[name-defined]

__version__ = "0.1.0"
__all__ = ["Model", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from stdiff import api

        return getattr(api, name)
    raise AttributeError(f"module 'stdiff' has no attribute {name!r}")
