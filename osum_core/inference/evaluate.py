"""Evaluating a checkpoint on a test split (``osum test``): the batches of the data module's test loader (the
loader ``osum fit``'s test reads), decoded by `decode_loader` and scored by each task's parser and metric
(`Scorer`, as at validation), with per-example scores for the report's worst examples.

Each example gets its task's first prompt of the configured bank (a fixed prompt, as at validation), so a
number can be reproduced from the report alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from osum_core.data.bad_items import SkipLog
from osum_core.data.loader import PlanLoader
from osum_core.inference.predict import DecodeStats, decode_loader
from osum_core.inference.scoring import Evaluation, Scorer
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Task


def evaluate(
    model: SpeechLLM,
    tokenizer: Any,
    tasks: Mapping[str, Task],
    loader: PlanLoader,
    settings: GenerationSettings,
    *,
    prompts: Mapping[str, str],
    skips: SkipLog | None = None,
    unselected: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Evaluation:
    """Decode and score every example of `loader`, stopping at the first bad item (planning records it in
    `skips`); rows in the split's order. `prompts` (task -> the prompt its examples get) and `unselected`
    (lines no selected task takes) go into the report."""
    stats = DecodeStats()
    scorer = Scorer(tasks)
    for item in decode_loader(model, tokenizer, loader, settings, device=device, stats=stats, skips=skips,
                              progress=progress):
        scorer.add(item.task, item.key, item.text, item.target, item.file)
    return scorer.evaluation(prompts, stats, unselected)
