"""Evaluating a checkpoint on manifests (``osum test``): the same batched decoding as ``osum predict``, each
task's own parser and metric, and per-example scores for the report's worst examples.

Each example gets its task's first prompt of the configured bank (a fixed prompt, as at validation), so a
number can be reproduced from the report alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchmetrics.functional.text import word_error_rate

from osum_core.data.dataset import assign_tasks, task_target
from osum_core.inference.predict import DecodeStats, Request, decode_batches
from osum_core.model.speech_llm import GenerationSettings, SpeechLLM
from osum_core.task import Prediction, Target, Task, normalize_transcript


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # task -> metric -> value (metrics.json, as osum fit writes it)
    confusions: dict[str, Any]  # task -> confusion matrices (classification tasks)
    rows: list[dict[str, Any]]  # one per example: key, task, text, reference, wer, correct
    prompts: dict[str, str]  # task -> the prompt used
    stats: DecodeStats = field(default_factory=DecodeStats)
    unselected: int = 0  # manifest lines no selected task takes


def example_scores(task: Task, prediction: Prediction, target: Target) -> dict[str, Any]:
    """The example's transcript WER (after the scoring normaliser) and whether its parsed answer (label and
    fields) equals the reference's parsed the same way."""
    scores: dict[str, Any] = {}
    reference = normalize_transcript(target.transcript)
    if reference:
        scores["wer"] = round(float(word_error_rate(normalize_transcript(prediction.transcript), reference)), 4)
    expected = task.parse_output(target.text)
    if expected.label is not None or expected.fields:
        scores["correct"] = expected.label == prediction.label and all(
            normalize_transcript(str(prediction.fields.get(k, ""))) == normalize_transcript(str(v))
            for k, v in expected.fields.items()
            if isinstance(v, str)
        )
    return scores


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
) -> Evaluation:
    pairs, unselected = assign_tasks(examples, list(tasks.values()))
    prompts = {name: task.prompt_bank(prompt_language)[0] for name, task in tasks.items()}
    requests, targets = [], []
    for example, task in pairs:
        targets.append(task_target(example, task))
        requests.append(Request(str(example["key"]), str(example["wav"]), task, prompts[task.name]))
    stats = DecodeStats()
    metrics = {name: task.make_metric() for name, task in tasks.items()}
    rows: list[dict[str, Any] | None] = [None] * len(requests)
    for index, answer in decode_batches(
        model, tokenizer, requests, settings, n_mels=n_mels, batch_size=batch_size, device=device, stats=stats
    ):
        task, target = requests[index].task, targets[index]
        metrics[task.name].update([answer.prediction], [target])
        rows[index] = {
            "key": requests[index].key,
            "task": task.name,
            "file": requests[index].file,
            "text": answer.text,
            "reference": target.text,
            **example_scores(task, answer.prediction, target),
        }
    present = {request.task.name for request in requests}
    results = {name: metric.compute() for name, metric in sorted(metrics.items()) if name in present}
    confusions = {
        name: metric.confusion_matrices()
        for name, metric in sorted(metrics.items())
        if name in results and callable(getattr(metric, "confusion_matrices", None))
    }
    return Evaluation(results, confusions, [r for r in rows if r is not None], prompts, stats, unselected)
