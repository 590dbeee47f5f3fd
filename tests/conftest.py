"""Shared fixtures: a tiny demo corpus and tiny Whisper/Qwen2 models saved in the real formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osum_core.data.demo_corpus import CorpusSpec, synthesize_corpus
from osum_core.plugins import load_tasks

TINY_SPEC = CorpusSpec(tags=("<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"), train_per_task=24, eval_per_task=6, seed=3)


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
    synthesize_corpus(out, CorpusSpec(tags=tags, train_per_task=6, eval_per_task=2, seed=5), registry.recipes, workers=2)
    return out


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
