"""OSUM/WeNet raw manifests: one JSON object per line with ``key``, ``wav``, ``txt`` and optional fields
(``task``, ``lang``, ``speaker``, ``emotion``, ``gender``, ``extra``, label fields...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from osum_core.data.bad_items import BadItem

REQUIRED_FIELDS = ("key", "wav", "txt")
BOM = b"\xef\xbb\xbf"


class ManifestError(BadItem):
    """A manifest line that cannot be used; the message starts with ``file:line``."""

    reason = "not_json"


def parse_manifest_line(path: Path, number: int, line: str | bytes) -> dict[str, Any]:
    """One manifest line as an example: ``wav`` resolved against the manifest's folder, ``_source`` set.
    ``key`` may be a string or an integer (kept as a string); ``wav`` and ``txt`` must be strings."""
    where = f"{path}:{number}"
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ManifestError(f"{where}: not UTF-8 text (byte {error.start + 1} of the line)", "not_utf8") from None
    try:
        example = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(example, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(example).__name__}")
    key = example.get("key")
    missing = [f for f in REQUIRED_FIELDS if f not in example]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}", "missing_field",
                            key=None if key is None else str(key))
    if isinstance(key, int) and not isinstance(key, bool):
        example["key"] = key = str(key)
    for name in REQUIRED_FIELDS:
        if not isinstance(example[name], str):
            raise ManifestError(f"{where}: field {name!r} must be a string, got {type(example[name]).__name__} "
                                f"{json.dumps(example[name])[:40]}", "wrong_type", key=str(key))
    wav = Path(example["wav"])
    example["wav"] = str(wav if wav.is_absolute() else path.parent / wav)
    example["_source"] = where
    return example


def manifest_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the manifest's non-empty lines; a byte-order mark and CRLF line ends are
    accepted. Lines are decoded one by one (`parse_manifest_line`), so one line that is not UTF-8 costs
    that line only."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found", "empty_file", source=str(path))
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if line.strip():
                yield number, line


def read_manifest(path: str | Path, on_error: Callable[[BadItem], None] | None = None) -> list[dict[str, Any]]:
    """All examples of one jsonl manifest. ``wav`` is resolved relative to the manifest's folder, and each
    example records where it came from (``_source``: ``file:line``) so later errors can name it. A bad
    line raises, or goes to `on_error` and is passed over; so does an empty manifest."""
    examples, lines = [], 0
    for number, line in manifest_lines(path):
        lines += 1
        try:
            examples.append(parse_manifest_line(Path(path), number, line))
        except ManifestError as error:
            if on_error is None:
                raise
            on_error(error)
    if not lines:
        error = ManifestError(f"{path}: the manifest is empty", "empty_file", source=str(path))
        if on_error is None:
            raise error
        on_error(error)
    return examples


def read_manifests(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Examples of one manifest or several, in order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    return [example for path in paths for example in read_manifest(path)]


def write_manifest(path: str | Path, examples: Iterable[dict[str, Any]]) -> None:
    """Write examples as jsonl atomically (a temporary file renamed into place), so a crash never leaves a
    half-written manifest behind."""
    path = Path(path)
    partial = path.with_suffix(path.suffix + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
    partial.replace(path)
