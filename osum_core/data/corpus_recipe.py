"""What a plugin contributes for a public corpus (``osum data prepare``): the `CorpusRecipe` record.

A recipe turns a corpus folder, as its release unpacks, into manifest lines: one line per (utterance, task),
in OSUM's format (``key``, ``wav``, ``txt``, ``task`` and optional fields). Items it cannot use it does not
drop silently: it yields a `LeftOut` naming the item and why. `osum_core.data.corpus_preparation` runs a
recipe: it reads every line's audio to its end (its duration, and whether it is readable), writes one
manifest per subset atomically, and reports what it kept, mapped and left out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CorpusLayoutError(ValueError):
    """SRC_DIR is not the release's folder: the message says what was expected there."""


@dataclass(frozen=True)
class LeftOut:
    """An item of the release that gets no manifest line: `item` names it (a file, a transcript line, a
    table row: ``file:line``), `reason` is a short category counted in the report (``no audio``,
    ``no transcript``, ``label not mapped``), `detail` anything more (the raw label)."""

    item: str
    reason: str
    detail: str = ""


RecordOrLeftOut = Mapping[str, Any] | LeftOut


@dataclass(frozen=True)
class CorpusRecipe:
    """A public corpus, as one plugin knows it.

    name: used on the command line (``osum data prepare librispeech …``); lowercase, unique among installed
        recipes.
    description: one line for ``osum data prepare --list``.
    tasks: names of the tasks its lines feed (``("asr", "sgc")``); every line's ``task`` tag must be one of
        theirs.
    splits: every subset the release can have, in the order listed; each becomes ``OUT_DIR/<split>.jsonl``.
    source: what SRC_DIR is, as the release unpacks (``LibriSpeech/, holding train-clean-100/, …``).
    find_splits: SRC_DIR -> the subsets present there (a subset of `splits`); raises `CorpusLayoutError`
        saying what it expected when SRC_DIR is not the release's folder.
    read: (SRC_DIR, split) -> the split's manifest lines (dicts with ``key``, ``wav`` (a path), ``txt``,
        ``task``; ``duration`` is measured by osum) and `LeftOut` items. A line keeps the release's own
        label as ``extra.raw_label`` where it maps one, so the report shows every mapping. Audio is
        pointed at where it lies; a recipe never writes into SRC_DIR.
    default_splits: the subsets prepared when ``--splits`` is not given (those of them present); empty: every
        subset present. For a release whose subsets nest or overlap (WenetSpeech's S ⊂ M ⊂ L).
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    splits: tuple[str, ...]
    source: str
    find_splits: Callable[[Path], Iterable[str]]
    read: Callable[[Path, str], Iterable[RecordOrLeftOut]]
    default_splits: tuple[str, ...] = ()


def recipe_problems(recipe: object) -> list[str]:
    """What makes `recipe` unusable, as messages (empty when it is fine)."""
    if not isinstance(recipe, CorpusRecipe):
        return [f"{recipe!r} is not an osum_core.plugins.CorpusRecipe"]
    problems = []
    if not recipe.name or recipe.name != recipe.name.lower() or not recipe.name.replace("-", "").replace("_", "").isalnum():
        problems.append(f"name {recipe.name!r} must be a lowercase identifier (letters, digits, - and _)")
    if not recipe.tasks or not all(isinstance(t, str) and t for t in recipe.tasks):
        problems.append("tasks must name the task(s) its lines feed")
    if not recipe.splits or len(set(recipe.splits)) != len(recipe.splits):
        problems.append("splits must list the release's subsets, each once")
    if not set(recipe.default_splits) <= set(recipe.splits):
        problems.append("default_splits must be some of splits")
    for name in ("find_splits", "read"):
        if not callable(getattr(recipe, name)):
            problems.append(f"{name} must be a function")
    return problems
