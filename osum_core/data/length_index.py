"""The length index of a shard list: per shard, every key's label fields, audio byte range and length.

Built once per shard (by ``osum data shard``, or on first read) and cached beside the list, in
``LIST.index/``: one jsonl file per shard whose first line records the shard's size and modification
time, so a rewritten shard is indexed again. With it, task selection, durations, batch counts and
mixture shares are known without decoding audio. A folder that cannot be written keeps the index in
memory for this process only (and says so once). A key that cannot be used is kept in the index as its
error (so every later read reports it again, without scanning the shard)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from osum_core.data.bad_items import BadItem
from osum_core.data.shards import ShardEntry, ShardError, scan_shard

INDEX_SUFFIX = ".index"
_warned: set[str] = set()


def index_dir(shard_list: Path) -> Path:
    return shard_list.with_name(shard_list.name + INDEX_SUFFIX)


def index_file(shard_list: Path, shard: Path) -> Path:
    """Where `shard`'s index lives: named after the shard, with a hash of its path (names may repeat)."""
    digest = hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:10]
    return index_dir(shard_list) / f"{shard.name}.{digest}.jsonl"


def shard_stamp(shard: Path) -> dict[str, int]:
    try:
        stat = shard.stat()
    except OSError as error:
        raise ShardError(f"{shard}: cannot open shard ({error.strerror})", source=str(shard)) from None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_index(path: Path, shard: Path, entries: list[ShardEntry | ShardError]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # ranks may index the same shard at once
    with partial.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"shard": str(shard), **shard_stamp(shard), "count": len(entries)}) + "\n")
        for entry in entries:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
    partial.replace(path)


def cached_entries(path: Path, shard: Path) -> Iterator[ShardEntry | ShardError] | None:
    """The cached index of `shard`, streamed line by line, or None when missing or stale."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError:
        return None
    header = json.loads(lines.readline() or "{}")
    if {k: header.get(k) for k in ("size", "mtime_ns")} != shard_stamp(shard):
        lines.close()
        return None

    def rows() -> Iterator[ShardEntry | ShardError]:
        with lines:
            for line in lines:
                row = json.loads(line)
                yield ShardError.from_json(row) if row.get("error") else ShardEntry.from_json(row)

    return rows()


def shard_entries(shard_list: Path, shard: Path, on_error: Callable[[BadItem], None] | None = None) -> Iterator[ShardEntry]:
    """The entries of one shard of `shard_list`, from its cached index (built and cached when missing).
    A key or shard that cannot be used raises its `ShardError`, or goes to `on_error` and is passed over."""
    try:
        yield from usable(indexed_entries(shard_list, shard), on_error)
    except ShardError as error:  # the shard cannot be opened at all
        if on_error is None:
            raise
        on_error(error)


def usable(entries: Iterator[ShardEntry | ShardError], on_error: Callable[[BadItem], None] | None) -> Iterator[ShardEntry]:
    for entry in entries:
        if isinstance(entry, ShardEntry):
            yield entry
        elif on_error is None:
            raise entry
        else:
            on_error(entry)


def indexed_entries(shard_list: Path, shard: Path) -> Iterator[ShardEntry | ShardError]:
    path = index_file(shard_list, shard)
    cached = cached_entries(path, shard)
    if cached is not None:
        return cached
    entries = list(scan_shard(shard))
    try:
        write_index(path, shard, entries)
    except OSError as error:
        if str(shard_list) not in _warned:
            _warned.add(str(shard_list))
            print(f"osum: warning: cannot cache the length index in {path.parent} ({error.strerror}); "
                  "indexing again in each process (run `osum data shard` into a writable folder)", file=sys.stderr)
    return iter(entries)


def read_shard_list(path: str | Path, on_error: Callable[[BadItem], None] | None = None) -> list[Path]:
    """The shard paths of a list file, one per line; relative paths resolve against the list's folder. A
    line naming a missing shard raises, or goes to `on_error` and is passed over."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard list not found", source=str(path))
    shards = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        shard = Path(line)
        shard = shard if shard.is_absolute() else path.parent / shard
        if not shard.is_file():
            error = ShardError(f"{path}:{number}: shard {shard} not found", "shard_missing", source=f"{path}:{number}")
            if on_error is None:
                raise error
            on_error(error)
            continue
        shards.append(shard)
    if not shards:
        raise ShardError(f"{path}: the shard list names no shard", source=str(path))
    return shards
