"""``osum data check PATH``: read every item of a manifest, shard list or mixture as training would, and
report what is there and what is wrong.

Counts per task and label, a duration histogram and the total hours; every line or member that cannot be
used, with ``file:line`` (manifests) or the shard and key. Nothing stops at the first error: the point
is the whole list."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osum_core.data.audio import load_audio
from osum_core.data.dataset import assign_task, task_target
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE
from osum_core.data.shards import read_wav_member
from osum_core.data.sources import split_records
from osum_core.task import Task

DURATION_BINS = (1, 2, 5, 10, 20, 30)  # seconds: upper edges of the histogram's bins (the last is open)


@dataclass
class CheckReport:
    items: int = 0
    seconds: float = 0.0
    tasks: Counter[str] = field(default_factory=Counter)
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    durations: Counter[str] = field(default_factory=Counter)
    unselected: int = 0
    errors: list[str] = field(default_factory=list)

    def add_duration(self, seconds: float) -> None:
        self.seconds += seconds
        edge = next((e for e in DURATION_BINS if seconds < e), None)
        self.durations[f"<{edge}s" if edge else f">={DURATION_BINS[-1]}s"] += 1

    def to_json(self) -> dict[str, Any]:
        order = [f"<{e}s" for e in DURATION_BINS] + [f">={DURATION_BINS[-1]}s"]
        return {
            "items": self.items,
            "hours": round(self.seconds / 3600, 4),
            "tasks": dict(sorted(self.tasks.items())),
            "labels": {t: dict(sorted(c.items())) for t, c in sorted(self.labels.items())},
            "durations": {b: self.durations[b] for b in order if self.durations[b]},
            "unselected": self.unselected,
            "errors": len(self.errors),
        }


def check_record(record: dict[str, Any], tasks: Sequence[Task], report: CheckReport) -> None:
    where = str(record.get("_source", record.get("key")))
    task = assign_task(record, tasks)
    if task is None:
        report.unselected += 1
        return
    try:
        target = task_target(record, task)
        member = record.get("_member")
        if member is None:
            wave = load_audio(record["wav"])
        else:
            wave = load_audio(io.BytesIO(read_wav_member(record["wav"], *member)), name=where)
    except ValueError as error:
        message = str(error)
        report.errors.append(message if message.startswith(where) else f"{where}: {message}")
        return
    report.items += 1
    report.tasks[task.name] += 1
    if task.labels:
        report.labels.setdefault(task.name, Counter())[target.suffix] += 1
    seconds = len(wave) / SAMPLE_RATE
    if member is not None and abs(int(seconds * SAMPLE_RATE) // HOP_LENGTH - record["_frames"]) > 1:
        report.errors.append(f"{where}: the index says {record['_frames']} frames, the audio has "
                             f"{int(seconds * SAMPLE_RATE) // HOP_LENGTH} (re-run osum data shard)")
    report.add_duration(seconds)


def check_data(path: str | Path, tasks: Sequence[Task], progress: Callable[[], None] | None = None) -> CheckReport:
    """Read and decode every item `path` names, with `tasks` forming each item's target."""
    report = CheckReport()
    for record in split_records(str(path), str(path), on_error=lambda error: report.errors.append(str(error))):
        check_record(record, tasks, report)
        if progress:
            progress()
    return report
