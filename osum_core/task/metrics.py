"""Metrics a task can reuse: transcript error rates, and label accuracy/F1 on top of them (torchmetrics).

Every metric reports ``count`` (examples scored) next to its scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.text import CharErrorRate, WordErrorRate

from osum_core.task.contract import Prediction, Target
from osum_core.task.normalize import normalize_pair
from osum_core.task.tags import split_suffix_tags


class TranscriptMetric:
    """WER and CER of the transcript part, each pair normalised alike (`normalize_pair`)."""

    def __init__(self) -> None:
        self.wer = WordErrorRate()
        self.cer = CharErrorRate()
        self.count = 0
        self.scored = 0  # examples with a reference transcript (tasks without one report no WER)

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        normalized = [normalize_pair(p.transcript, t.transcript) if t.transcribed else ("", "")
                      for p, t in zip(predictions, targets, strict=True)]
        # torchmetrics divides by reference words; an empty reference would count as zero words. A target
        # the model does not transcribe (``Target.transcribed``) has no transcript to score.
        pairs = [(h, r) for h, r in normalized if r]
        self.scored += len(pairs)
        if pairs:
            self.wer.update([h for h, _ in pairs], [r for _, r in pairs])
            self.cer.update([h for h, _ in pairs], [r for _, r in pairs])
        self.count += len(predictions)

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        if self.scored == 0:
            return {"count": self.count}
        return {"wer": float(self.wer.compute()), "cer": float(self.cer.compute()), "count": self.count}


class LabelMetric:
    """Accuracy and macro-F1 of the label, plus the transcript's WER/CER (ASR+X tasks report both).

    An answer with no label, one outside the label set, or one marked invalid (``Prediction.valid``) counts
    as wrong: it is scored as an extra "invalid" class that no reference has. Macro-F1 averages the F1 of the
    classes that occur in the references."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.confusion = MulticlassConfusionMatrix(num_classes=len(self.labels) + 1)
        self.transcript = TranscriptMetric()

    def _class(self, label: str | None) -> int:
        return self.index.get(label.strip(), len(self.labels)) if label is not None else len(self.labels)

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        self.transcript.update(predictions, targets)
        pred = torch.tensor([self._class(p.label if p.valid else None) for p in predictions], dtype=torch.long)
        ref = torch.tensor([self._class(target_label(t)) for t in targets], dtype=torch.long)
        self.confusion.update(pred, ref)

    def compute(self) -> dict[str, float]:
        scores = self.transcript.compute()
        if not scores:
            return {}
        matrix = self.confusion.compute().double()  # rows: reference, columns: prediction
        correct = matrix.diagonal()
        support = matrix.sum(dim=1)
        predicted = matrix.sum(dim=0)
        f1 = 2 * correct / (support + predicted).clamp(min=1)
        present = support[: len(self.labels)] > 0
        return {
            "accuracy": float(correct.sum() / matrix.sum()),
            "macro_f1": float(f1[: len(self.labels)][present].mean()) if present.any() else 0.0,
            "invalid": int(predicted[len(self.labels)]),
            **scores,
        }

    def confusion_matrix(self) -> tuple[tuple[str, ...], list[list[int]]]:
        """Class names (the last is "invalid") and counts, rows = reference, columns = prediction."""
        return (*self.labels, "invalid"), self.confusion.compute().tolist()

    def confusion_matrices(self) -> dict[str, dict[str, list]]:
        """``{"label": {"labels": [...], "counts": [[...]]}}``, written to the run's confusion.json."""
        labels, counts = self.confusion_matrix()
        return {"label": {"labels": list(labels), "counts": counts}}


def target_label(target: Target) -> str | None:
    """The label a target's suffix carries (``"<laugh>"`` -> ``"laugh"``)."""
    suffix = target.suffix.strip()
    if suffix.startswith("<") and ">" in suffix:
        return suffix[1 : suffix.index(">")]
    return None


class FieldsMetric:
    """Several labels per example (OSUM's ``<adult><female>``): each field's accuracy and macro-F1
    (``age_accuracy`` ...), and ``accuracy`` = the share of examples with every field right.

    References are the target's suffix tags in field order; predictions are ``Prediction.fields``; every field
    of an invalid prediction counts as wrong."""

    def __init__(self, fields: Mapping[str, Sequence[str]]) -> None:
        self.names = tuple(fields)
        self.per_field = {name: LabelMetric(labels) for name, labels in fields.items()}
        self.transcript = TranscriptMetric()
        self.all_right = MeanMetric()

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        self.transcript.update(predictions, targets)
        references = [split_suffix_tags(t.suffix)[1] for t in targets]
        right = torch.ones(len(predictions), dtype=torch.bool)
        for index, name in enumerate(self.names):
            guesses = [p.fields.get(name) for p in predictions]
            truths = [tags[index] if index < len(tags) else None for tags in references]
            self.per_field[name].update(
                [Prediction(p.text, "", guess, valid=p.valid) for p, guess in zip(predictions, guesses, strict=True)],
                [Target("", f"<{truth}>" if truth is not None else "") for truth in truths],
            )
            right &= torch.tensor(
                [p.valid and g is not None and g == t for p, g, t in zip(predictions, guesses, truths, strict=True)],
                dtype=torch.bool,
            )
        if len(predictions):
            self.all_right.update(right.double())

    def confusion_matrices(self) -> dict[str, dict[str, list]]:
        """One confusion matrix per field (see `LabelMetric.confusion_matrices`)."""
        return {name: metric.confusion_matrices()["label"] for name, metric in self.per_field.items()}

    def compute(self) -> dict[str, float]:
        scores = self.transcript.compute()
        if not scores:
            return {}
        result = {"accuracy": float(self.all_right.compute())}
        for name, metric in self.per_field.items():
            field_scores = metric.compute()
            for key in ("accuracy", "macro_f1", "invalid"):
                result[f"{name}_{key}"] = field_scores[key]
        return {**result, **scores}
