"""The command line's argument helpers: ``--set KEY=VALUE`` overrides, job configs from flags and
YAML, ``START:END`` periods, comma lists, ``NAME=STORE`` pairs, and the one-line failure."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml


def set_overrides(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.steps=100")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            where = getattr(e, "problem", None) or type(e).__name__
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({where})") from None
    return out


def job_config(cls, base: dict, set_: list[str] | None, config: Path | None, where: str):
    """A job config: ``--set`` over the command's options over the YAML file (when given)."""
    from stdiff.pipelines.engine.config import from_dict, load_config, nested

    overrides = {**base, **set_overrides(set_)}
    if config is not None:
        return load_config(config, cls, overrides)
    return from_dict(cls, nested(overrides), where)


def fail(message: str) -> None:
    from stdiff.boundary import one_line

    typer.echo(f"stdiff: error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def period_flag(text: str | None, name: str) -> tuple[str, str] | None:
    """``START:END`` of the option ``--name``: two dates (or date-times), START not after END;
    every error names the flag."""
    import numpy as np

    if text is None:
        return None
    start, sep, end = text.partition(":")
    if not sep or not start or not end:
        raise ValueError(f"--{name} {text!r}: expected START:END, e.g. 2013-01-01:2013-12-31")
    bounds = []
    for part in (start, end):
        try:
            bounds.append(np.datetime64(part.strip()))
        except ValueError:
            raise ValueError(
                f"--{name} {text!r}: {part!r} is not a date like 2013-01-01 (or 2013-01-01T06)"
            ) from None
    if bounds[0] > bounds[1]:
        raise ValueError(f"--{name} {text!r}: the start {start} is after the end {end}")
    return start.strip(), end.strip()


def csv_flag(text: str | None, cast=str) -> tuple | None:
    return None if text is None else tuple(cast(t) for t in text.split(",") if t)


def pair_flag(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--forecast {text!r}: expected NAME=STORE")
    return name, path


def pairs_flag(texts: list[str]) -> dict[str, str]:
    """``--forecast NAME=STORE`` flags as a mapping; a NAME given twice is refused."""
    out: dict[str, str] = {}
    for text in texts:
        name, path = pair_flag(text)
        if name in out:
            raise ValueError(f"--forecast {name}=...: the name {name!r} is given twice; give "
                             "each forecast its own NAME")  # fmt: skip
        out[name] = path
    return out
