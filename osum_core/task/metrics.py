"""Metrics a task can reuse: transcript error rates, and label accuracy/F1 on top of them (torchmetrics)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.text import CharErrorRate, WordErrorRate

from osum_core.task.contract import Prediction, Target
from osum_core.task.normalize import normalize_transcript


class TranscriptMetric:
    """WER and CER of the transcript part, after `normalize_transcript` on both sides."""

    def __init__(self) -> None:
        self.wer = WordErrorRate()
        self.cer = CharErrorRate()
        self.count = 0

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        hyps = [normalize_transcript(p.transcript) for p in predictions]
        refs = [normalize_transcript(t.transcript) for t in targets]
        # torchmetrics divides by reference words; an empty reference would count as zero words.
        pairs = [(h, r) for h, r in zip(hyps, refs, strict=True) if r]
        if pairs:
            self.wer.update([h for h, _ in pairs], [r for _, r in pairs])
            self.cer.update([h for h, _ in pairs], [r for _, r in pairs])
        self.count += len(predictions)

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        return {"wer": float(self.wer.compute()), "cer": float(self.cer.compute()), "count": self.count}


class LabelMetric:
    """Accuracy and macro-F1 of the label, plus the transcript's WER/CER (ASR+X tasks report both).

    An answer with no label, or one outside the label set, counts as wrong: it is scored as an extra
    "invalid" class that no reference has. Macro-F1 averages the F1 of the classes that occur in the
    references."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.confusion = MulticlassConfusionMatrix(num_classes=len(self.labels) + 1)
        self.transcript = TranscriptMetric()

    def _class(self, label: str | None) -> int:
        return self.index.get(label.strip(), len(self.labels)) if label is not None else len(self.labels)

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        self.transcript.update(predictions, targets)
        pred = torch.tensor([self._class(p.label) for p in predictions], dtype=torch.long)
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


def target_label(target: Target) -> str | None:
    """The label a target's suffix carries (``"<laugh>"`` -> ``"laugh"``)."""
    suffix = target.suffix.strip()
    if suffix.startswith("<") and ">" in suffix:
        return suffix[1 : suffix.index(">")]
    return None
