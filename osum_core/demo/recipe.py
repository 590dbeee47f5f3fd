"""The types a task plugin uses to contribute demo data (hook ``osum_demo_recipes``; PLUGINS.md, "Demo
data"). They are public API: plugins import them from `osum_core.plugins`.

A `DemoRecipe` realises one task tag in the synthetic corpus: `draw` plans an `Utterance` (words, voice,
labels), `render` turns the synthesised speech into the final audio (`Rendered`), `label_text` writes the
label suffix of the manifest's ``txt``. A recipe may declare `options` (with defaults) that users set as
``data.demo.options.<name>=value``; `draw` reads them from ``spec.options``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osum_core.demo.speech_synth import Voice, list_variants, variant_gender
from osum_core.task import Task


@dataclass(frozen=True)
class CorpusSpec:
    """What `osum_core.demo.corpus.synthesize_corpus` generates; built from ``data.demo`` in the config
    (`from_config`), where every default lives. The counts are per task tag.

    tags: the task tags to synthesise (each needs a `DemoRecipe`).
    seed: the corpus is a pure function of it.
    train_per_task / eval_per_task: utterances per tag in train, and in each of dev and test.
    train_voices / heldout_voices: eSpeak NG variants (``m1``..``m7``, ``f1``..``f5``) of train and of dev/test.
    rate: (lowest, highest) speaking rate, words per minute; pitch: (lowest, highest), 0-100.
    min_words / max_words: digits per utterance.
    options: recipe options (``data.demo.options``); inside `DemoRecipe.draw`, exactly that recipe's options
        with their values."""

    tags: tuple[str, ...]
    seed: int
    train_per_task: int
    eval_per_task: int
    train_voices: tuple[str, ...]
    heldout_voices: tuple[str, ...]
    rate: tuple[int, int]
    pitch: tuple[int, int]
    min_words: int
    max_words: int
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, demo: Mapping[str, Any], seed: int, tags: tuple[str, ...]) -> CorpusSpec:
        """The spec of the ``data.demo`` config section (a plain dict) for `tags`."""
        available = set(list_variants())
        for key in ("train_voices", "heldout_voices"):
            unknown = [voice for voice in demo[key] if voice not in available]
            if unknown:
                raise ValueError(f"data.demo.{key}: unknown eSpeak NG variant {', '.join(map(repr, unknown))}; "
                                 f"available: {', '.join(sorted(available))}")
        return cls(
            tags=tuple(tags),
            seed=int(seed),
            train_per_task=int(demo["train_per_task"]),
            eval_per_task=int(demo["eval_per_task"]),
            train_voices=tuple(demo["train_voices"]),
            heldout_voices=tuple(demo["heldout_voices"]),
            rate=(int(demo["rate"][0]), int(demo["rate"][1])),
            pitch=(int(demo["pitch"][0]), int(demo["pitch"][1])),
            min_words=int(demo["min_words"]),
            max_words=int(demo["max_words"]),
            options=dict(demo["options"] or {}),
        )


@dataclass(frozen=True)
class Utterance:
    """Everything needed to render one utterance; drawn up front so rendering is a pure function.

    key: the manifest key (``demo-<tag>-<split>-<n>``); split: train, dev or test; tag: the task tag.
    words: what is said (the transcript), digits plus whatever `draw` adds.
    voice: the `Voice` (``osum_core.plugins.Voice``: eSpeak voice ``name``, ``variant``, ``rate`` in words
        per minute, ``pitch`` and ``pitch_range`` 0-100).
    seed: seeds the numpy Generator that `render` receives.
    labels: manifest fields to write (``{"emotion": "happy"}``); keys starting with ``_`` are private to the
        recipe (kept for `render`, not written).

    A recipe's `draw` may change the words, the voice (prosody) and add labels."""

    key: str
    split: str
    tag: str
    words: tuple[str, ...]
    voice: Voice
    seed: int
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def gender(self) -> str:
        """The voice's gender, "female" or "male" (`osum_core.demo.speech_synth.variant_gender`)."""
        return variant_gender(self.voice.variant)


@dataclass(frozen=True)
class Rendered:
    """A recipe's audio (16 kHz float32 in [-1, 1]). Word timestamps from the synthesiser become
    ``start * stretch + offset``."""

    audio: np.ndarray
    offset: float = 0.0  # seconds of sound placed before the speech
    stretch: float = 1.0  # how much the speech was slowed down (< 1: sped up)
    fields: dict[str, Any] = field(default_factory=dict)  # extra manifest fields


def with_prosody(voice: Voice, rng: random.Random, rate: int, pitch: int, pitch_range: int) -> Voice:
    """`voice` speaking at about `rate` words per minute (eSpeak takes 80-450), `pitch` and `pitch_range`
    (0-100, 50 is the voice's own), each jittered a little (rate ±10, pitch and range ±5, clamped to 0-100)
    so that a class's prosody is a region, not a point."""
    clamp = lambda value: min(max(value, 0), 100)  # noqa: E731
    return dataclasses.replace(
        voice,
        rate=rate + rng.randint(-10, 10),
        pitch=clamp(pitch + rng.randint(-5, 5)),
        pitch_range=clamp(pitch_range + rng.randint(-5, 5)),
    )


def keep(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    """The default draw: the digit string and voice as planned, no label."""
    return utt


def plain(utt: Utterance, speech: np.ndarray, rng: np.random.Generator) -> Rendered:
    """The default render: the speech as it is."""
    return Rendered(speech)


def no_suffix(utt: Utterance) -> str:
    return ""


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo corpus realises one task tag, contributed by the task's plugin (hook
    ``osum_demo_recipes``). Use module-level functions: synthesis workers receive recipes by pickling.

    draw: changes a planned utterance (words, voice, labels); gets the plan's random generator and the
        `CorpusSpec`, whose ``options`` are this recipe's options with their configured values.
    render: turns the synthesised speech (16 kHz float32) into the final audio.
    label_text: the suffix written after the transcript in ``txt`` (``<laugh>``), OSUM's ASR+X form.
    options: the recipe's own settings and their defaults (VED's ``event_positions``); users set them as
        ``data.demo.options.<name>=value``.
    version: raise it when `draw`, `render` or `label_text` change what they write: a corpus made by another
        version (recorded in its ``corpus.json``) is synthesised again instead of being reused."""

    draw: Callable[[Utterance, random.Random, CorpusSpec], Utterance] = keep
    render: Callable[[Utterance, np.ndarray, np.random.Generator], Rendered] = plain
    label_text: Callable[[Utterance], str] = no_suffix
    options: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """This recipe's options: its defaults, replaced by the values in `given` that it declares."""
        return {name: given.get(name, default) for name, default in self.options.items()}


def recipe_tag(task: Task, recipes: Mapping[str, DemoRecipe]) -> str | None:
    """The tag of `task`'s demo recipe: its own tag's, else that of its ASR+X form (``<TRANSCRIBE>`` before
    its tag: a task in its label-only form, ``tasks.ved.transcript=false``, reads its ASR+X corpus, so that
    both forms train on the same utterances); None when neither has a recipe."""
    for tag in (task.tag, f"<TRANSCRIBE> {task.tag}"):
        if tag in recipes:
            return tag
    return None
