"""The plugin system: hook specifications and the loader of the ``osum`` entry-point group."""

from osum_core.plugins.hookspecs import hookimpl
from osum_core.plugins.manager import PluginProblem, TaskRegistry, load_tasks

__all__ = ["PluginProblem", "TaskRegistry", "hookimpl", "load_tasks"]
