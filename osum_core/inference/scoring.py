"""Scoring generated text: each task's parser and metric, plus one row per example. The one scoring path of
``osum fit``'s validation and test and of ``osum test`` (and later ``osum serve``'s evaluation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchmetrics import Metric
from torchmetrics.functional.text import word_error_rate

from osum_core.inference.predict import DecodeStats
from osum_core.task import Prediction, Target, Task, TaskMetric
from osum_core.task.normalize import normalize_pair


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # task -> metric -> value (metrics.json)
    confusions: dict[str, Any]  # task -> confusion matrices (classification tasks)
    rows: list[dict[str, Any]]  # one per example: key, task, [file], text, reference, wer, correct
    prompts: dict[str, str]  # task -> the prompt used
    stats: DecodeStats = field(default_factory=DecodeStats)
    unselected: int = 0  # manifest lines no selected task takes


def same_text(hypothesis: str, reference: str) -> bool:
    """Whether two texts are equal after the scoring normaliser (decided for the pair)."""
    normalized_hypothesis, normalized_reference = normalize_pair(hypothesis, reference)
    return normalized_hypothesis == normalized_reference


def example_scores(task: Task, prediction: Prediction, target: Target) -> dict[str, Any]:
    """The example's transcript WER (after the scoring normaliser; of the words an invalid answer's parser
    recovered; none when the model is not asked for the transcript) and whether its parsed answer (label and fields) equals the reference's parsed the same way
    (never for an invalid answer)."""
    scores: dict[str, Any] = {}
    hypothesis, reference = normalize_pair(prediction.transcript, target.transcript)
    if reference and target.transcribed:
        scores["wer"] = round(float(word_error_rate(hypothesis, reference)), 4)
    expected = task.parse_output(target.text)
    if expected.label is not None or expected.fields:
        scores["correct"] = prediction.valid and expected.label == prediction.label and all(
            same_text(str(prediction.fields.get(k, "")), v)
            for k, v in expected.fields.items()
            if isinstance(v, str)
        )
    return scores


def computed_here(metric: Any, depth: int = 0) -> Any:
    """`metric` with every torchmetrics ``Metric`` inside it set to compute from its own state only. Under
    data parallelism the answers of all ranks are gathered before scoring (`SpeechLLMModule`), so a
    torchmetrics sync across processes at ``compute()`` would count every example once per rank."""
    if isinstance(metric, Metric):
        metric.sync_on_compute = False
        metric._to_sync = False  # what compute() reads; set from sync_on_compute at construction
    if depth < 4:
        values = metric.values() if isinstance(metric, dict) else metric if isinstance(metric, list | tuple) else (
            vars(metric).values() if hasattr(metric, "__dict__") and not isinstance(metric, Metric) else ())
        for value in values:
            if isinstance(value, Metric | dict | list | tuple) or (hasattr(value, "__dict__") and not callable(value)):
                computed_here(value, depth + 1)
    return metric


class Scorer:
    """Accumulates answers of the given tasks: `add` one example at a time, then `evaluation`."""

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self.tasks = dict(tasks)
        self.metrics: dict[str, TaskMetric] = {}
        self.rows: list[dict[str, Any]] = []

    def add(self, task_name: str, key: str, text: str, target: Target, file: str | None = None,
            prediction: Prediction | None = None) -> Prediction:
        """Score `text` (generated for `key`) against `target`; returns the parsed prediction."""
        task = self.tasks[task_name]
        prediction = prediction if prediction is not None else task.parse_output(text)
        metric = self.metrics.get(task_name)
        if metric is None:
            metric = task.make_metric()
            shared = [name for name, other in self.metrics.items() if other is metric]
            if shared:  # one task's answers would change the other's scores
                raise ValueError(
                    f"task {task_name!r}: make_metric() returned the metric object of task {shared[0]!r}; "
                    "it must return a new one on each call"
                )
            metric = self.metrics[task_name] = computed_here(metric)
        metric.update([prediction], [target])
        row: dict[str, Any] = {"key": key, "task": task_name}
        if file is not None:
            row["file"] = file
        row.update(text=text, reference=target.text, **example_scores(task, prediction, target))
        self.rows.append(row)
        return prediction

    def evaluation(self, prompts: Mapping[str, str] | None = None, stats: DecodeStats | None = None,
                   unselected: int = 0) -> Evaluation:
        """Each task's metrics (tasks that had examples), confusion matrices where the metric offers them
        (an optional method of the `TaskMetric` protocol), and the rows."""
        metrics = {name: self.metrics[name].compute() for name in sorted(self.metrics)}
        confusions = {
            name: self.metrics[name].confusion_matrices()  # type: ignore[attr-defined]
            for name in sorted(self.metrics)
            if callable(getattr(self.metrics[name], "confusion_matrices", None))
        }
        return Evaluation(metrics, confusions, list(self.rows), dict(prompts or {}), stats or DecodeStats(), unselected)
