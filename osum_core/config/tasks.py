"""The ``tasks:`` section: per-task weights and task options applied to the installed tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from osum_core.config.load import ConfigError
from osum_core.plugins import TaskRegistry
from osum_core.task import Task

TASK_WEIGHTS = ("loss_weight", "label_loss_weight", "sampling_weight")


def configured_tasks(registry: TaskRegistry, names: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, Task]:
    """The selected tasks with the config's overrides applied: ``tasks.<name>.<weight>`` for the weights
    every task has, ``tasks.<name>.<option>`` for a task's own options (`Task.options`). A key for a task
    that is not installed, or that the task does not take, is a `ConfigError` naming it."""
    tasks = {task.name: task for task in registry.select(names)}
    for name, settings in overrides.items():
        if name not in registry.tasks:
            raise ConfigError(f"config key 'tasks.{name}': no installed task {name!r} ({', '.join(sorted(registry.tasks))})")
        settings = dict(settings or {})
        task = registry.tasks[name]
        unknown = [k for k in settings if k not in TASK_WEIGHTS and k not in task.options]
        if unknown:
            takes = ", ".join([*TASK_WEIGHTS, *task.options])
            raise ConfigError(f"unknown config key 'tasks.{name}.{unknown[0]}'; task {name!r} takes {takes}")
        if name in tasks:
            weights = {k: float(v) for k, v in settings.items() if k in TASK_WEIGHTS}
            options = {k: v for k, v in settings.items() if k not in TASK_WEIGHTS}
            try:
                tasks[name] = tasks[name].with_options(**options).with_weights(**weights)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"config key 'tasks.{name}': {error}") from None
    return tasks
