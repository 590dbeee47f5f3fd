"""Evaluating a checkpoint on manifests or shards (``osum test``): the same batched decoding as ``osum predict``, each
task's own parser and metric, and per-example scores for the report's worst examples.

Each example gets its task's first prompt of the configured bank (a fixed prompt, as at validation), so a
number can be reproduced from the report alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from osum_core.data.dataset import assign_tasks, task_target
from osum_core.inference.predict import DecodeStats, Request, decode_batches
from osum_core.inference.scoring import Evaluation, Scorer
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Task


def evaluate(
    model: SpeechLLM,
    tokenizer: Any,
    tasks: Mapping[str, Task],
    examples: Sequence[Mapping[str, Any]],
    settings: GenerationSettings,
    *,
    prompt_language: str,
    n_mels: int,
    batch_size: int,
    device: str = "cpu",
    progress: bool = False,
) -> Evaluation:
    """Decode every example of `examples` that one of `tasks` selects and score it; rows in manifest order."""
    pairs, unselected = assign_tasks(examples, list(tasks.values()))
    prompts = {name: task.prompt_bank(prompt_language)[0] for name, task in tasks.items()}
    requests, targets = [], []
    for example, task in pairs:
        targets.append(task_target(example, task))
        member = example.get("_member")
        requests.append(Request(str(example["key"]), str(example["wav"]), task, prompts[task.name],
                                tuple(member) if member is not None else None))
    stats = DecodeStats()
    scorer = Scorer(tasks)
    answers = decode_batches(
        model, tokenizer, requests, settings, n_mels=n_mels, batch_size=batch_size, device=device, stats=stats,
        progress=progress,
    )
    decoded = dict(answers)  # decoding goes longest first; rows follow the manifests
    for index, request in enumerate(requests):
        answer = decoded[index]
        scorer.add(request.task.name, request.key, answer.text, targets[index], request.where, answer.prediction)
    return scorer.evaluation(prompts, stats, unselected)
