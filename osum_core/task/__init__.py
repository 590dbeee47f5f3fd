"""The task contract: what a task plugin contributes (see PLUGINS.md).

Everything a third-party task needs is importable from here; nothing in this package knows about models,
data loading or Lightning.
"""

from osum_core.task.contract import Prediction, RecordView, Target, Task, TaskMetric
from osum_core.task.metrics import FieldsMetric, LabelMetric, TranscriptMetric
from osum_core.task.normalize import normalize_target, normalize_transcript
from osum_core.task.tagged import LabelField, tagged_task
from osum_core.task.tags import is_garbled, split_suffix_tags, strip_tags, suffix_label

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
    "normalize_target",
    "normalize_transcript",
    "split_suffix_tags",
    "strip_tags",
    "tagged_task",
]
