"""Registry of training tasks: the YAML ``task:`` name → its module's ``SPEC``.

Modules are imported on first use so parsing one task's config does not pay
for the other tasks' models.
"""

from __future__ import annotations

import importlib

from jaxecg.config import ConfigError
from jaxecg.train.tasks.base import Task, TaskSpec

_MODULES = {
    "mae_pretrain": "jaxecg.train.tasks.mae",
    "simclr_pretrain": "jaxecg.train.tasks.simclr",
    "ecg_finetune": "jaxecg.train.tasks.ecg_finetune",
    "cmr_finetune": "jaxecg.train.tasks.cmr_finetune",
}

TASK_NAMES = tuple(_MODULES)


def get_task(name: object) -> TaskSpec:
    """The :class:`TaskSpec` registered under ``name`` (a config error names ``task``)."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ConfigError(f"task: unknown task {name!r}; choose from {list(TASK_NAMES)}")
    return importlib.import_module(_MODULES[name]).SPEC


__all__ = ["TASK_NAMES", "Task", "TaskSpec", "get_task"]
