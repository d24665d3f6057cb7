"""Training tasks by name (``data.task``): each is one module with a ``TASK`` object implementing
:class:`pipelines.tasks.base.Task`. Adding a task is one new module plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

from stdiff.pipelines.tasks.base import Task

# data.task -> the module holding its TASK (imported when first used)
TASKS: dict[str, str] = {
    "images": "stdiff.pipelines.tasks.images",  # class-conditional images (generate, reconstruct)
    "imputation": "stdiff.pipelines.tasks.imputation",  # CSDI: stays or windows of long series
    "forecast": "stdiff.pipelines.tasks.forecast",  # GenCast-style weather states
}


def get_task(name: str) -> Task:
    """The registered task ``name``; an unknown name is refused listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"data.task {name!r} is not known; choose one of {list(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def require_job(task: str, job: str, checkpoint: Any) -> Task:
    """The task of a checkpoint that the inference ``job`` reads; one line when it cannot."""
    t = get_task(task)
    if job not in t.jobs:
        readers = [n for n in TASKS if job in get_task(n).jobs]
        raise ValueError(
            f"{checkpoint}: trained for the {task!r} task, not {' or '.join(readers)}; "
            f"`stdiff {job}` needs a checkpoint of that task"
        )
    return t
