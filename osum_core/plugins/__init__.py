"""The plugin system: hook specifications and the loader of the ``osum`` entry-point group.

A plugin imports what it needs from here and from `osum_core.task` (see PLUGINS.md): `hookimpl`, and for
demo data the recipe types of `osum_core.demo.recipe` and eSpeak's `Voice`."""

from osum_core.data.corpus_recipe import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.demo.recipe import CorpusSpec, DemoRecipe, Rendered, Utterance, with_prosody
from osum_core.demo.speech_synth import Voice
from osum_core.plugins.hookspecs import hookimpl
from osum_core.plugins.manager import PluginProblem, TaskRegistry, load_tasks

__all__ = [
    "CorpusLayoutError",
    "CorpusRecipe",
    "CorpusSpec",
    "DemoRecipe",
    "LeftOut",
    "PluginProblem",
    "Rendered",
    "TaskRegistry",
    "Utterance",
    "Voice",
    "hookimpl",
    "load_tasks",
    "with_prosody",
]
