"""The "no data given -> synthesise the demo corpus" step of ``osum fit`` and ``osum test``, and ``osum
data synth``: each task's corpus in its own folder (reused when made with the same settings), plus
``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` over all of them in the root folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from osum_core.config import ConfigError
from osum_core.data.manifest import write_manifest
from osum_core.demo.corpus import SPLITS, corpus_is_complete, synthesize_corpus
from osum_core.demo.recipe import CorpusSpec, DemoRecipe, recipe_tag
from osum_core.task import Task


def check_recipe_options(demo: Mapping[str, Any], recipes: Mapping[str, DemoRecipe]) -> None:
    """Every ``data.demo.options`` key must be an option of some installed recipe."""
    declared = {name for recipe in recipes.values() for name in recipe.options}
    for name in demo["options"] or {}:
        if name not in declared:
            raise ConfigError(
                f"unknown config key 'data.demo.options.{name}': no installed demo recipe has that option "
                f"(options: {', '.join(sorted(declared)) or 'none'})"
            )


def task_corpus_spec(demo: Mapping[str, Any], seed: int, tag: str, recipe: DemoRecipe) -> CorpusSpec:
    """The corpus of one task tag; it records only the options its recipe reads, so changing another
    recipe's option does not make it stale."""
    spec = CorpusSpec.from_config(demo, seed, (tag,))
    return CorpusSpec(**{**spec.__dict__, "options": recipe.resolve_options(spec.options)})


def write_combined_manifests(root: Path, dirs: Mapping[str, Path]) -> None:
    """``root/<split>.jsonl`` holding every task corpus's lines of that split, ``wav`` relative to root."""
    for split in SPLITS:
        lines = []
        for directory in dirs.values():
            relative = directory.relative_to(root) if directory.is_relative_to(root) else directory.resolve()
            for text in (directory / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                if text.strip():
                    line = json.loads(text)
                    wav = Path(line["wav"])
                    line["wav"] = (wav if wav.is_absolute() else relative / wav).as_posix()
                    lines.append(line)
        write_manifest(root / f"{split}.jsonl", lines)


def synthesize_demo(
    root: Path,
    tasks: Iterable[Task],
    recipes: Mapping[str, DemoRecipe],
    demo: Mapping[str, Any],
    seed: int,
    log: Callable[[str], None],
) -> dict[str, Path]:
    """The demo corpus of each task in ``root/<task name>``, synthesised where missing or made with other
    settings, and the combined manifests in `root`. Returns the directories by task name."""
    check_recipe_options(demo, recipes)
    dirs = {}
    for task in tasks:
        tag = recipe_tag(task, recipes)
        if tag is None:
            raise ConfigError(
                f"task {task.name!r} ({task.tag}) has no demo-corpus recipe; give manifests as data.train/val/test"
            )
        spec = task_corpus_spec(demo, seed, tag, recipes[tag])
        out = dirs[task.name] = root / task.name
        if not corpus_is_complete(out, spec, recipes):
            log(f"synthesising the demo corpus for {task.name} into {out} ...")
            counts = synthesize_corpus(out, spec, recipes, workers=demo["workers"], progress=task.name)
            log(f"demo corpus {task.name}: {counts}")
    write_combined_manifests(root, dirs)
    return dirs


def resolve_demo_data(cfg: dict[str, Any], tasks: Mapping[str, Task], recipes: Mapping[str, DemoRecipe], log) -> None:
    """With no manifests given, point data.train/val/test at the demo corpora of the selected tasks."""
    data = cfg["data"]
    if any(data[split] for split in ("train", "val", "test")):
        return
    dirs = synthesize_demo(Path(data["demo"]["dir"]), tasks.values(), recipes, data["demo"], cfg["seed"], log)
    for key, split in (("train", "train"), ("val", "dev"), ("test", "test")):
        data[key] = [str(d / f"{split}.jsonl") for d in dirs.values()]
