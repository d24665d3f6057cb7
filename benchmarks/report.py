"""Shared by the benchmark scripts: the machine line and marked sections of BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from shutil import which

import torch


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the part of ``path`` between ``begin`` and ``end`` (markers included in
    ``section``), or append the section; create the file when missing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def machine() -> str:
    """CPU model (lscpu), cores, torch version and threads, Python, date."""
    lscpu = (
        subprocess.run(["lscpu"], capture_output=True, text=True).stdout if which("lscpu") else ""
    )
    cpu = [ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln]
    return (
        f"{(cpu or [platform.processor()])[0]}, {os.cpu_count()} cores, torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads), Python {platform.python_version()},"
        f" {datetime.date.today().isoformat()}"
    )


def emit_section(name: str, title: str, cmd: str, body: str, write: Path | None) -> str:
    """The marked section ``<!-- BEGIN name -->`` (title, command, machine, body): printed, and
    written into ``write`` (replacing that section) when given."""
    section = (f"<!-- BEGIN {name} -->\n## {title}\n\n{cmd}\n\nMachine: {machine()}\n\n"
               f"{body}\n<!-- END {name} -->\n")  # fmt: skip
    print(section)
    if write:
        write_section(write, section, f"<!-- BEGIN {name} -->", f"<!-- END {name} -->")
    return section
