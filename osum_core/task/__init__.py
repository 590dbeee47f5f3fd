"""The task contract: what a task plugin contributes (see PLUGINS.md).

Everything a third-party task needs is importable from here; nothing in this package knows about models,
data loading or Lightning.

The metric classes (`FieldsMetric`, `LabelMetric`, `TranscriptMetric`) are imported on first use: they
bring in torch and torchmetrics, and loading the plugins (`osum tasks`, every command before its own work)
needs only the tasks' data, not their metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from osum_core.task.contract import Prediction, RecordView, Target, Task, TaskMetric
from osum_core.task.normalize import normalize_pair, normalize_target, normalize_transcript
from osum_core.task.tagged import LabelField, tagged_task
from osum_core.task.tags import is_garbled, split_suffix_tags, strip_tags, suffix_label

if TYPE_CHECKING:
    from osum_core.task.metrics import FieldsMetric, LabelMetric, TranscriptMetric

METRICS = ("FieldsMetric", "LabelMetric", "TranscriptMetric")


def __getattr__(name: str) -> Any:
    if name in METRICS:
        return getattr(importlib.import_module("osum_core.task.metrics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FieldsMetric",
    "LabelField",
    "LabelMetric",
    "Prediction",
    "RecordView",
    "Target",
    "Task",
    "TaskMetric",
    "TranscriptMetric",
    "is_garbled",
    "suffix_label",
    "normalize_pair",
    "normalize_target",
    "normalize_transcript",
    "split_suffix_tags",
    "strip_tags",
    "tagged_task",
]
