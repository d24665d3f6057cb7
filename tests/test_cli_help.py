"""Each job's ``--help`` shows an example and exactly the config keys its dataclasses accept."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.help import JOBS, config_keys


@pytest.mark.parametrize("command", sorted(JOBS))
def test_help_lists_the_config_keys_of_the_code(command: str) -> None:
    for module, cls, _ in JOBS[command][1]:
        klass = getattr(importlib.import_module(f"stdiff.pipelines.{module}"), cls)
        assert config_keys(module, cls) == [f.name for f in dataclasses.fields(klass)]
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=400)
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert f"Example: stdiff {command}" in text
    module, cls, prefix = JOBS[command][1][-1]
    assert f"{prefix}{config_keys(module, cls)[-1]}" in text
