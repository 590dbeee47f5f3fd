"""Items that cannot be used, and what ``data.on_error`` does with them.

Every error about one item (a manifest line, a shard or one of its members, an audio file) is a `BadItem`:
its message starts with where the item is (``file:line``, or ``shard: key KEY``), and its `reason` is one
word of `REASONS`. With ``data.on_error: skip`` (``osum fit``'s default) a bad item is passed over and
recorded in a `SkipLog`: counted once per item and reason, and written to ``RUN_DIR/skipped.jsonl`` (key,
source, reason, message); ``raise`` stops at the first one, naming it.

Items are found bad in two places: while an epoch is planned (manifest lines, targets, audio headers,
shard indexes: the main process of every rank) and while a dataloader worker loads the audio (corrupt
samples, NaN, silence). A worker cannot raise without ending the run, so it hands the failure back inside
the batch (`SpeechDataset`), and the training loop records it (`osum_core.train.skipped_items`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ON_ERROR = ("skip", "raise")

# reason -> what it means (README's reliability section lists the same).
REASONS = {
    "not_json": "a manifest line that is not a JSON object",
    "not_utf8": "a manifest line or shard member that is not UTF-8 text",
    "missing_field": "a manifest line without key, wav or txt",
    "wrong_type": "a field of the wrong type (e.g. a number for txt)",
    "unknown_task": "a task tag that no installed task has",
    "bad_target": "a line its task cannot use (e.g. a label outside the task's set)",
    "empty_transcript": "an empty target: no transcript and no label",
    "duplicate_key": "a key seen before in the same split",
    "empty_file": "a manifest without any line (or none at that path)",
    "audio_missing": "an audio file that does not exist",
    "audio_unreadable": "audio that cannot be decoded (truncated, corrupt, not audio)",
    "audio_empty": "audio without samples",
    "audio_not_finite": "audio with NaN or infinite samples",
    "audio_silent": "audio whose samples are all zero",
    "too_long": "audio longer than the model's maximum input (data.too_long: skip)",
    "shard_unreadable": "a tar shard that cannot be opened, or is truncated (its later members)",
    "shard_member": "a shard member group without audio, or with a label that cannot be read",
    "shard_missing": "a shard list line naming a shard that does not exist",
    "load_failed": "any other error while a dataloader worker prepared the item",
}


class BadItem(ValueError):
    """An item that cannot be used. `source` is where it is (``file:line``, ``shard: key K``, or a file),
    `key` its key when known."""

    reason = "load_failed"

    def __init__(self, message: str, reason: str | None = None, source: str | None = None,
                 key: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        assert self.reason in REASONS, self.reason
        self.source = source or message.split(": ", 1)[0]
        self.key = key

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "reason": self.reason, "message": str(self)}


def check_on_error(value: str) -> str:
    if value not in ON_ERROR:
        raise ValueError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {value!r}")
    return value


class SkipLog:
    """The bad items passed over: each (source, reason) once, counted by reason.

    `path` (``RUN_DIR/skipped.jsonl``) receives each new item as a line when `write` is true (the rank
    that writes files); a resumed run reads it back first, so counts continue. Without a path (``osum
    data check``, tests) the items stay in memory."""

    def __init__(self, path: Path | None = None, write: bool = True) -> None:
        self.path = path
        self.write = write
        self.counts: Counter[str] = Counter()
        self.rows: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        self.pending: list[dict[str, Any]] = []  # added since the last `take_pending` (to share across ranks)
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._remember(json.loads(line))

    def _remember(self, row: dict[str, Any]) -> bool:
        mark = (str(row["source"]), str(row["reason"]))
        if mark in self._seen:
            return False
        self._seen.add(mark)
        self.counts[row["reason"]] += 1
        self.rows.append(row)
        return True

    def add_row(self, row: dict[str, Any]) -> bool:
        """Record one bad item (as `BadItem.to_json` gives it); False if it was recorded before."""
        if not self._remember(row):
            return False
        self.pending.append(row)
        if self.path is not None and self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return True

    def add(self, error: BadItem) -> bool:
        return self.add_row(error.to_json())

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> int:
        return sum(self.add_row(row) for row in rows)

    def take_pending(self) -> list[dict[str, Any]]:
        pending, self.pending = self.pending, []
        return pending

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def error_handler(on_error: str, log: SkipLog) -> Callable[[BadItem], None]:
    """What planning calls with each bad item: record it (``skip``) or raise it (``raise``)."""
    check_on_error(on_error)

    def handle(error: BadItem) -> None:
        if on_error == "raise":
            raise error
        log.add(error)

    return handle
