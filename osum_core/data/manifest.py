"""OSUM/WeNet raw manifests: one JSON object per line with ``key``, ``wav``, ``txt`` and optional fields
(``task``, ``lang``, ``speaker``, ``emotion``, ``gender``, ``extra``, label fields...)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("key", "wav", "txt")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message starts with ``file:line``."""


def parse_manifest_line(path: Path, number: int, line: str) -> dict[str, Any]:
    """One manifest line as an example: ``wav`` resolved against the manifest's folder, ``_source`` set."""
    where = f"{path}:{number}"
    try:
        example = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(example, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(example).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in example]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    wav = Path(str(example["wav"]))
    example["wav"] = str(wav if wav.is_absolute() else path.parent / wav)
    example["_source"] = where
    return example


def manifest_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the manifest's non-empty lines."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All examples of one jsonl manifest. ``wav`` is resolved relative to the manifest's folder, and each
    example records where it came from (``_source``: ``file:line``) so later errors can name it."""
    return [parse_manifest_line(Path(path), number, line) for number, line in manifest_lines(path)]


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
