"""Loading task plugins from the ``osum`` entry-point group, isolating the broken ones."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from osum_core.config.tasks import selected_tasks
from osum_core.data.corpus_recipe import CorpusRecipe, recipe_problems
from osum_core.demo.recipe import DemoRecipe
from osum_core.plugins import hookspecs
from osum_core.task import Task
from osum_core.task.contract import contract_problems, normalize_task_tag

ENTRY_POINT_GROUP = "osum"
HOOKIMPL_IMPORT = "from osum_core.plugins import hookimpl"


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not contribute: its package (distribution) name, its plugin (entry-point) name,
    why, and the hook concerned (``osum_tasks``), empty when the plugin failed as a whole (import,
    registration)."""

    package: str
    plugin: str
    reason: str
    hook: str = ""

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} from package {self.package!r}: {self.reason}"


@dataclass
class TaskRegistry:
    """The installed tasks by name, where each came from, the demo-corpus recipes by task tag, the public
    corpus recipes by name, and the plugins that failed."""

    tasks: dict[str, Task] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # task name -> "file:line" of its plugin
    recipes: dict[str, DemoRecipe] = field(default_factory=dict)
    corpora: dict[str, CorpusRecipe] = field(default_factory=dict)  # corpus recipes by name
    corpus_packages: dict[str, str] = field(default_factory=dict)  # corpus recipe name -> its package
    problems: list[PluginProblem] = field(default_factory=list)

    def select(self, names: Iterable[str]) -> list[Task]:
        """Tasks by name (`osum_core.config.tasks.selected_tasks`)."""
        return selected_tasks(self.tasks, names)


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


# What a plugin's import or hook may raise without taking osum down: any error, and sys.exit().
PLUGIN_FAILURES = (Exception, SystemExit)


def installed_entry_points(group: str = ENTRY_POINT_GROUP) -> list[importlib.metadata.EntryPoint]:
    """The `group` entry points of the installed distributions, by name.

    Installed means found on sys.path outside the current directory: Python puts that directory first on
    sys.path for ``python -m`` and ``python -c``, but it is not an installation, so a stray or stale
    ``*.dist-info`` / ``*.egg-info`` there (a build's ``osum.egg-info``, a downloaded folder) is never read
    and cannot shadow the installed one. A distribution found twice counts once, where sys.path finds it first
    (as importlib does)."""
    try:
        here: str | None = os.path.realpath(os.getcwd())
    except OSError:  # the current directory was removed
        here = None
    path = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != here]
    seen: set[str] = set()
    points: list[importlib.metadata.EntryPoint] = []
    for dist in importlib.metadata.distributions(path=path):
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name in seen:
            continue
        seen.add(name)
        points.extend(dist.entry_points.select(group=group))
    return sorted(points, key=lambda e: e.name)


def load_tasks(blocked: Iterable[str] = (), extra_plugins: Iterable[object] = ()) -> TaskRegistry:
    """Import every installed ``osum`` entry point (`installed_entry_points`; nothing else is loaded: no
    module from the current directory or a config file), collect its tasks and recipes, and report what
    failed without stopping: a plugin that fails to import, register or check is left out; a hook that
    raises or returns the wrong type is reported with its name and contributes nothing, the plugin's other
    hooks still do.

    `blocked` names entry points to skip (as pytest's ``-p no:name``); `extra_plugins` registers plugin
    objects directly (tests, notebooks)."""
    registry = TaskRegistry()
    manager = new_plugin_manager()
    blocked = set(blocked)
    plugins: list[tuple[str, str, object]] = []
    for entry_point in installed_entry_points():
        if entry_point.name in blocked:
            continue
        package = entry_point.dist.name if entry_point.dist is not None else "?"
        try:
            plugins.append((package, entry_point.name, entry_point.load()))
        except PLUGIN_FAILURES as error:  # a broken plugin must not take the others down
            registry.problems.append(PluginProblem(package, entry_point.name, f"import failed: {error!r}"))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        plugins.append((getattr(plugin, "__package__", None) or name, name, plugin))

    for package, name, plugin in plugins:
        for hook in unmarked_hooks(manager, plugin):
            reason = f"defines {hook}() without @hookimpl ({HOOKIMPL_IMPORT})"
            registry.problems.append(PluginProblem(package, name, reason, hook))
        try:
            manager.register(plugin, name=name)
            manager.check_pending()  # a misspelled hook implementation is an error, not a silent no-op
        except PLUGIN_FAILURES as error:
            if manager.is_registered(plugin):
                manager.unregister(plugin)
            registry.problems.append(PluginProblem(package, name, f"{type(error).__name__}: {error}"))
            continue
        where = (registry, package, name, manager, plugin)
        contributed: list[Task] = guarded(*where, "osum_tasks", plugin_tasks) or []
        recipes: dict[str, DemoRecipe] = guarded(*where, "osum_demo_recipes", plugin_recipes) or {}
        for task in contributed:
            add_task(registry, task, package, name, origin(plugin))
        for tag, recipe in recipes.items():
            if tag in registry.recipes:
                reason = f"a demo recipe for {tag} exists already"
                registry.problems.append(PluginProblem(package, name, reason, "osum_demo_recipes"))
            else:
                registry.recipes[tag] = recipe
        for corpus in guarded(*where, "osum_corpus_recipes", plugin_corpus_recipes) or []:
            add_corpus_recipe(registry, corpus, package, name)
    return registry


def guarded(
    registry: TaskRegistry,
    package: str,
    name: str,
    manager: pluggy.PluginManager,
    plugin: object,
    hook: str,
    read: Callable[[pluggy.PluginManager, object], Any],
) -> Any:
    """`read(manager, plugin)`, the checked result of one hook of one plugin; None when it fails, with the
    failure recorded as the plugin's problem, naming the hook."""
    try:
        return read(manager, plugin)
    except PLUGIN_FAILURES as error:
        reason = f"{hook}() failed: {type(error).__name__}: {error}"
        registry.problems.append(PluginProblem(package, name, reason, hook))
        return None


def unmarked_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hooks `plugin` defines as plain functions, without `hookimpl`: pluggy ignores those silently."""
    hooks = [name for name in vars(hookspecs) if manager.parse_hookspec_opts(hookspecs, name) is not None]
    return [
        hook
        for hook in hooks
        if inspect.isroutine(getattr(plugin, hook, None)) and manager.parse_hookimpl_opts(plugin, hook) is None
    ]


def plugin_hook_result(manager: pluggy.PluginManager, plugin: object, hook: str):
    """What `plugin`'s implementation of `hook` returns, or None when it has none."""
    implementation = [impl for impl in getattr(manager.hook, hook).get_hookimpls() if impl.plugin is plugin]
    return implementation[0].function() if implementation else None


def plugin_tasks(manager: pluggy.PluginManager, plugin: object) -> list[Task]:
    """Call one plugin's ``osum_tasks`` hook and check that it returned tasks."""
    result = plugin_hook_result(manager, plugin, "osum_tasks")
    if result is None:
        return []
    if not isinstance(result, list | tuple) or not all(isinstance(t, Task) for t in result):
        raise TypeError("osum_tasks() must return a list of osum_core.task.Task")
    return list(result)


def plugin_recipes(manager: pluggy.PluginManager, plugin: object) -> dict[str, DemoRecipe]:
    """Call one plugin's ``osum_demo_recipes`` hook and check that it returned recipes by task tag."""
    result = plugin_hook_result(manager, plugin, "osum_demo_recipes")
    if result is None:
        return {}
    if not isinstance(result, dict) or not all(isinstance(r, DemoRecipe) for r in result.values()):
        raise TypeError("osum_demo_recipes() must return a dict of task tag -> osum_core.plugins.DemoRecipe")
    return {normalize_task_tag(tag): recipe for tag, recipe in result.items()}


def plugin_corpus_recipes(manager: pluggy.PluginManager, plugin: object) -> list[CorpusRecipe]:
    """Call one plugin's ``osum_corpus_recipes`` hook and check that it returned a list."""
    result = plugin_hook_result(manager, plugin, "osum_corpus_recipes")
    if result is None:
        return []
    if not isinstance(result, list | tuple):
        raise TypeError("osum_corpus_recipes() must return a list of osum_core.plugins.CorpusRecipe")
    return list(result)


def add_corpus_recipe(registry: TaskRegistry, recipe: object, package: str, plugin: str) -> None:
    problems = recipe_problems(recipe)
    if isinstance(recipe, CorpusRecipe) and recipe.name in registry.corpora:
        owner = registry.corpus_packages[recipe.name]
        problems.append(f"a corpus recipe named {recipe.name!r} exists already (from package {owner!r})")
    if problems:
        what = f"corpus recipe {recipe.name!r}" if isinstance(recipe, CorpusRecipe) else "corpus recipe"
        reason = f"{what}: " + "; ".join(problems)
        registry.problems.append(PluginProblem(package, plugin, reason, "osum_corpus_recipes"))
        return
    assert isinstance(recipe, CorpusRecipe)
    registry.corpora[recipe.name] = recipe
    registry.corpus_packages[recipe.name] = package


def origin(plugin: object) -> str:
    """Where a plugin's tasks are defined, as ``file:line`` of its ``osum_tasks`` hook."""
    function = getattr(plugin, "osum_tasks", None)
    if function is None:
        return "?"
    try:
        return f"{inspect.getsourcefile(function)}:{inspect.getsourcelines(function)[1]}"
    except (TypeError, OSError):
        return "?"


def add_task(registry: TaskRegistry, task: Task, package: str, plugin: str, where: str = "?") -> None:
    problems = contract_problems(task)
    if task.name in registry.tasks:
        problems.append(f"duplicate task name {task.name!r} (already from package {registry.packages[task.name]!r})")
    if problems:
        registry.problems.append(PluginProblem(package, plugin, f"task {task.name!r}: " + "; ".join(problems)))
        return
    registry.tasks[task.name] = task
    registry.packages[task.name] = package
    registry.origins[task.name] = where
