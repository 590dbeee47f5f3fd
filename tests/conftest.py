"""Shared fixtures: a tiny demo corpus and tiny Whisper/Qwen2 models saved in the real formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osum_core.config import load_config
from osum_core.demo.corpus import synthesize_corpus
from osum_core.plugins import CorpusSpec, load_tasks

DEMO = load_config()["data"]["demo"]  # the corpus settings of configs/fit.yaml


def corpus_spec(tags: tuple[str, ...], seed: int, **changes) -> CorpusSpec:
    """The configured demo corpus for `tags`, with `changes` (e.g. train_per_task=24)."""
    return CorpusSpec.from_config({**DEMO, **changes}, seed, tags)


TINY_SPEC = corpus_spec(("<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"), 3, train_per_task=24, eval_per_task=6)


@pytest.fixture(scope="session")
def registry():
    """The installed tasks and demo recipes, loaded as `osum` loads them."""
    return load_tasks()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, registry) -> Path:
    """A small demo corpus (ASR and VED) synthesised once per test session."""
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, TINY_SPEC, registry.recipes, workers=1)
    return out


@pytest.fixture(scope="session")
def all_tasks_corpus(tmp_path_factory, registry) -> Path:
    """A very small demo corpus with every installed task that has a demo recipe."""
    out = tmp_path_factory.mktemp("corpus_all")
    tags = tuple(dict.fromkeys(t.tag for t in registry.tasks.values() if t.tag in registry.recipes))
    synthesize_corpus(out, corpus_spec(tags, 5, train_per_task=6, eval_per_task=2), registry.recipes, workers=2)
    return out


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
