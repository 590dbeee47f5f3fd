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
from osum_core.data.bad_items import BadItem
from osum_core.data.dataset import ExamplePreparer, check_new_key
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE
from osum_core.data.length_index import repeated_keys, shard_entries
from osum_core.data.manifest import read_manifest
from osum_core.data.shards import read_wav_member
from osum_core.data.sources import resolve_sources
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
    reasons: Counter[str] = field(default_factory=Counter)  # errors by reason (`osum_core.data.bad_items`)
    keys: set[str] = field(default_factory=set)

    def add_error(self, error: ValueError) -> None:
        self.errors.append(str(error))
        self.reasons[getattr(error, "reason", "load_failed")] += 1

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
            "reasons": dict(sorted(self.reasons.items())),
        }


class NoTokens:
    """A tokenizer for checking: targets are built and checked, not tokenised."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return []


def check_record(record: dict[str, Any], preparer: ExamplePreparer, report: CheckReport) -> None:
    """Check one record as training would (its task, target, audio header), then decode its audio and
    compare its length with the one planning trusted (a shard index's, or a manifest line's ``duration``)."""
    where = str(record.get("_source", record.get("key")))
    try:
        example = preparer.prepare(record)
        if example is None:
            report.unselected += 1
            return
        member = record.get("_member")
        if member is None:
            wave = load_audio(record["wav"], name=f"{where}: {record['wav']}", span=example.span)
        else:
            wave = load_audio(io.BytesIO(read_wav_member(record["wav"], *member)), name=where)
    except BadItem as error:
        report.add_error(error)
        return
    report.items += 1
    report.tasks[example.task] += 1
    if next(t for t in preparer.tasks if t.name == example.task).labels:
        report.labels.setdefault(example.task, Counter())[example.target.suffix] += 1
    seconds = len(wave) / SAMPLE_RATE
    frames = int(seconds * SAMPLE_RATE) // HOP_LENGTH
    if member is not None and abs(frames - record["_frames"]) > 1:
        report.errors.append(f"{where}: the index says {record['_frames']} frames, the audio has {frames} "
                             "(re-run osum data shard)")
        report.reasons["shard_member"] += 1
    elif member is None and "duration" in record and abs(frames - example.frames) > 1:
        report.errors.append(f"{where}: field 'duration' says {record['duration']} s, the audio has {seconds:.3f} s")
        report.reasons["wrong_type"] += 1
    report.add_duration(seconds)


def check_data(path: str | Path, tasks: Sequence[Task], progress: Callable[[], None] | None = None,
               known_tasks: Sequence[Task] = ()) -> CheckReport:
    """Read and decode every item `path` names, with `tasks` forming each item's target; `known_tasks`
    (all installed) tell an unknown tag from one of a task not checked. Keys repeated in the data are
    found as training finds them: per source, its manifests' lines, then its shards."""
    report = CheckReport()
    preparer = ExamplePreparer(list(tasks), NoTokens(), tuple(known_tasks))
    for source in resolve_sources(str(path), str(path), report.add_error):
        for manifest in source.manifests:
            for record in read_manifest(manifest, report.add_error):
                try:
                    check_new_key(record, report.keys)
                except BadItem as error:
                    report.add_error(error)
                else:
                    check_record(record, preparer, report)
                if progress:
                    progress()
        for (shard_list, shard), repeats in zip(source.shards, repeated_keys(source.shards, report.keys), strict=True):
            for entry in shard_entries(shard_list, shard, report.add_error, repeats):
                check_record(entry.record(shard), preparer, report)
                if progress:
                    progress()
    return report
