"""Hook specifications of the ``osum`` pluggy project: the whole contract a plugin implements.

A plugin is any module registered under the entry-point group ``osum`` that implements one or more of these
hooks with `hookimpl`. The built-in tasks (`osum_tasks`) are plugins of exactly this kind.
"""

from __future__ import annotations

import pluggy

from osum_core.data.corpus_recipe import CorpusRecipe
from osum_core.demo.recipe import DemoRecipe
from osum_core.task import Task

PROJECT = "osum"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def osum_tasks() -> list[Task]:
    """Return the tasks this plugin contributes (a list of `osum_core.task.Task`).

    Called once when osum starts. Names must be unique across all installed plugins; a duplicate, or a task
    that breaks the contract, is reported with the plugin's package name and left out.
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    """Optional. Return how the demo corpus (``osum data synth``, and ``osum fit`` without manifests)
    realises your tasks: a `DemoRecipe` per task tag, e.g. ``{"<TRANSCRIBE> <LANGID>": RECIPE}``.

    A task without a recipe still trains on your own manifests; it just has no synthetic demo data.
    A tag claimed by two plugins is reported like a duplicate task name.
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def osum_corpus_recipes() -> list[CorpusRecipe]:
    """Optional. Return the public corpora this plugin can turn into training data (``osum data prepare``):
    a list of `CorpusRecipe`, each with its name, the tasks its lines feed, the release's subsets and the
    function from the unpacked folder to manifest lines. A corpus that feeds several tasks lives with one
    of them and names the others.

    A recipe name claimed by two plugins, or a recipe that breaks the contract, is reported with the
    plugin's package name and left out.
    """
    raise NotImplementedError  # a specification: plugins implement it
