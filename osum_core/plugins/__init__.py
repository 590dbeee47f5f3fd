"""The plugin system: hook specifications and the loader of the ``osum`` entry-point group.

A plugin imports what it needs from here and from `osum_core.task` (see PLUGINS.md)."""

from osum_core.data.demo_corpus import CorpusSpec, DemoRecipe, Rendered, Utterance, with_prosody
from osum_core.data.speech_synth import Voice
from osum_core.data.vocal_events import EVENT_LABELS, make_event
from osum_core.plugins.hookspecs import hookimpl
from osum_core.plugins.manager import PluginProblem, TaskRegistry, load_tasks

__all__ = [
    "CorpusSpec",
    "EVENT_LABELS",
    "DemoRecipe",
    "PluginProblem",
    "Rendered",
    "TaskRegistry",
    "Utterance",
    "Voice",
    "hookimpl",
    "load_tasks",
    "make_event",
    "with_prosody",
]
