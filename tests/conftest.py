"""Shared fixtures: a tiny demo corpus and tiny Whisper/Qwen2 models saved in the real formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from osum_core.data.demo_corpus import CorpusSpec, synthesize_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small demo corpus (ASR and VED) synthesised once per test session."""
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, CorpusSpec(train_per_task=24, eval_per_task=6, seed=3), workers=1)
    return out


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
