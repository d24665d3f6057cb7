"""Files that ship inside the package: the YAML configs (``stdiff.configs``) and the NCEP sample
(``stdiff.datasets``, ``samples/``). Found through ``importlib.resources``, so the CLI's defaults,
``stdiff demo``, ``stdiff serve --check`` and the quickstart work from any folder, in a
non-editable install as in the checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_config(name: str) -> Path:
    """The shipped config ``name`` (``"demo_toy2d.yaml"``); it may not exist."""
    return Path(str(files("stdiff.configs"))) / name


def shipped_sample(name: str) -> Path:
    """A sample file shipped in ``datasets/samples`` (``"ncep_air_2013q1.nc"``)."""
    return Path(str(files("stdiff.datasets"))) / "samples" / name


def resolve_config(path: str | Path) -> Path:
    """``path`` when it exists; else, for ``configs/NAME.yaml`` or a bare ``NAME.yaml`` (the
    names the docs and the shipped serve config use), the shipped config of that name."""
    path = Path(path)
    if path.exists() or path.parent.name not in ("configs", ""):
        return path
    shipped = shipped_config(path.name)
    return shipped if shipped.is_file() else path
