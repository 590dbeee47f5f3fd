"""The ``tasks:`` section: per-task weights and task options applied to the installed tasks.

A task's defaults live in its module (`Task`'s weights and `Task.options`), where a third-party task can
set them too; the section holds only what a config deliberately sets differently. `override_origins` says
which file (or the command line) set each value, for `osum tasks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from osum_core.config.load import (
    CONFIG_DIR,
    DEFAULT_PRESET,
    ConfigError,
    closest_key,
    default_config,
    preset_files,
    read_with_bases,
)
from osum_core.task import Task
from osum_core.task.contract import WEIGHTS

TASK_WEIGHTS = WEIGHTS  # every task has them; a task's own options come besides
COMMAND_LINE = "the command line"


def selected_tasks(installed: Mapping[str, Task], names: Iterable[str]) -> list[Task]:
    """Installed tasks by name, in the order given; ``all`` means every installed task. Unknown names raise
    ValueError listing the installed ones."""
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return list(installed.values())
    unknown = [n for n in names if n not in installed]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; installed tasks: {', '.join(sorted(installed)) or 'none'}")
    if not names:
        raise ValueError(f"no task given; installed tasks: {', '.join(sorted(installed))}")
    return [installed[n] for n in dict.fromkeys(names)]


def configured_tasks(installed: Mapping[str, Task], names: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, Task]:
    """The selected tasks of the `installed` ones (`selected_tasks`) with the config's overrides applied:
    ``tasks.<name>.<weight>`` for the weights every task has, ``tasks.<name>.<option>`` for a task's own
    options (`Task.options`). A key for a task that is not installed, or that the task does not take, is a
    `ConfigError` naming it (and the closest key the task takes)."""
    tasks = {task.name: task for task in selected_tasks(installed, names)}
    for name, settings in overrides.items():
        if name not in installed:
            raise ConfigError(f"config key 'tasks.{name}': no installed task {name!r} ({', '.join(sorted(installed))})")
        settings = dict(settings or {})
        task = installed[name]
        takes = [*TASK_WEIGHTS, *task.options]
        unknown = [k for k in settings if k not in takes]
        if unknown:
            key = f"tasks.{name}.{unknown[0]}"
            suggestion = closest_key(key, [f"tasks.{name}.{k}" for k in takes])
            hint = f"did you mean '{suggestion}'? " if suggestion else ""
            raise ConfigError(f"unknown config key '{key}'; {hint}task {name!r} takes {', '.join(takes)}")
        if name in tasks:
            weights = {k: float(v) for k, v in settings.items() if k in TASK_WEIGHTS}
            options = {k: v for k, v in settings.items() if k not in TASK_WEIGHTS}
            try:
                tasks[name] = tasks[name].with_options(**options).with_weights(**weights)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"config key 'tasks.{name}': {error}") from None
    return tasks


def shared_tags(tasks: Sequence[Task]) -> list[str]:
    """Messages for selected tasks that read each other's lines: a manifest line goes to the first task that
    selects it, so the second would silently never see those lines."""
    found = []
    for index, first in enumerate(tasks):
        for second in tasks[index + 1 :]:
            for owner, reader in ((second, first), (first, second)):
                if reader.selects({"task": owner.tag}):
                    found.append(f"tasks {first.name} and {second.name} both read lines tagged {owner.tag}; each line "
                                 f"would train {first.name} only. Train them in separate runs, or give one a tag of its own")
                    break
    return found


def shown_path(path: Path) -> str:
    """A shipped config as ``configs/...`` (where it is in the repository), any other file as given."""
    try:
        return f"configs/{path.resolve().relative_to(CONFIG_DIR.resolve()).as_posix()}"
    except ValueError:
        return str(path)


def override_origins(presets: Sequence[str] = (), files: Sequence[str | Path] = (),
                     overrides: Sequence[str] = ()) -> dict[str, str]:
    """``<name>.<key>`` -> where the ``osum fit`` config of these presets (the demo preset when none is
    named), files and ``key=value`` overrides sets ``tasks.<name>.<key>``: the last of configs/fit.yaml, the
    preset files (with their ``extends:`` bases), the files and `COMMAND_LINE` that sets it. Keys no layer
    sets are absent: their values are the tasks' own."""
    layers: list[tuple[str, Any]] = [(shown_path(CONFIG_DIR / "fit.yaml"), default_config("fit"))]
    for file in [*preset_files(list(presets) or [DEFAULT_PRESET]), *files]:
        layers += [(shown_path(path), data) for path, data in read_with_bases(Path(file))]
    given = [item for item in overrides if item.split("=", 1)[0].split(".", 1)[0] == "tasks"]
    if given:
        layers.append((COMMAND_LINE, OmegaConf.to_container(OmegaConf.from_dotlist(given), resolve=False)))
    origins: dict[str, str] = {}
    for origin, data in layers:
        section = data.get("tasks") if isinstance(data, Mapping) else None
        for name, settings in (section or {}).items():
            for key in settings or {}:
                origins[f"{name}.{key}"] = origin
    return origins
