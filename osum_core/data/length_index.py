"""The length index of a shard list: per shard, every key's label fields, audio byte range and length.

Built once per shard (by ``osum data shard``, or on first read) and cached beside the list, in
``LIST.index/``: one jsonl file per shard whose first line records the format version and the shard's
size and modification time (so a rewritten shard is indexed again), whose second line lists the keys of
its usable entries, and then one line per key. With it, task selection, durations, batch counts and
mixture shares are known without decoding audio. A folder that cannot be written keeps the index in
memory for this process only (and says so once). A key that cannot be used is kept in the index as its
error (so every later read reports it again, without scanning the shard), a key repeated inside the
shard among them.

**Keys repeated across shards.** `repeated_keys` reads the key lines of a split's shards once, in the
split's order, with one set of every key of the split; a key that an earlier shard (or manifest line)
has is a `duplicate_key` error where `shard_entries` meets it again. The result depends on the data
alone, so every process and every pass reports the same items. Reading a key line costs about 0.1 µs a
key (against 3.6 µs to parse an entry's line); the set costs about 115 bytes a key while planning (2.3
GB for 20 million keys, given back after)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from osum_core.data.bad_items import BadItem
from osum_core.data.shards import ShardEntry, ShardError, scan_shard

INDEX_SUFFIX = ".index"
INDEX_VERSION = 2  # 2: a line of the usable keys after the header, and keys repeated inside a shard found
NO_KEYS: frozenset[str] = frozenset()
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
    # Processes on several hosts may index the same shard at once, and a pid alone repeats across hosts.
    partial = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        with partial.open("x", encoding="utf-8") as out:
            out.write(json.dumps({"version": INDEX_VERSION, "shard": str(shard), **shard_stamp(shard),
                                  "count": len(entries)}) + "\n")
            out.write(json.dumps([e.key for e in entries if isinstance(e, ShardEntry)], ensure_ascii=False) + "\n")
            for entry in entries:
                out.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)  # a name of its own is never written again: none may stay behind


def cached_index(path: Path, shard: Path) -> TextIO | None:
    """The cached index of `shard`, open at its key line, or None when missing, stale or of an older format."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError:
        return None
    header = json.loads(lines.readline() or "{}")
    if header.get("version") != INDEX_VERSION or {k: header.get(k) for k in ("size", "mtime_ns")} != shard_stamp(shard):
        lines.close()
        return None
    return lines


def index_rows(lines: TextIO) -> Iterator[ShardEntry | ShardError]:
    with lines:
        lines.readline()  # the keys
        for line in lines:
            row = json.loads(line)
            yield ShardError.from_json(row) if row.get("error") else ShardEntry.from_json(row)


def build_index(shard_list: Path, shard: Path) -> list[ShardEntry | ShardError]:
    """Scan `shard` and cache its index (or say once that the folder cannot hold it)."""
    path = index_file(shard_list, shard)
    entries = list(scan_shard(shard))
    try:
        write_index(path, shard, entries)
    except OSError as error:
        if str(shard_list) not in _warned:
            _warned.add(str(shard_list))
            print(f"osum: warning: cannot cache the length index in {path.parent} ({error.strerror}); "
                  "indexing again in each process (run `osum data shard` into a writable folder)", file=sys.stderr)
    return entries


def indexed_entries(shard_list: Path, shard: Path) -> Iterator[ShardEntry | ShardError]:
    lines = cached_index(index_file(shard_list, shard), shard)
    return index_rows(lines) if lines is not None else iter(build_index(shard_list, shard))


def index_keys(shard_list: Path, shard: Path) -> list[str]:
    """The keys of `shard`'s usable entries, in tar order, from its index's key line."""
    lines = cached_index(index_file(shard_list, shard), shard)
    if lines is None:
        return [e.key for e in build_index(shard_list, shard) if isinstance(e, ShardEntry)]
    with lines:
        return json.loads(lines.readline())


def repeated_keys(shards: Iterable[tuple[Path, Path]], seen: set[str]) -> list[frozenset[str]]:
    """For each (shard list, shard) of a split, in the split's order: the shard's keys that `seen` (the keys
    of the split's manifest lines and earlier shards) holds already. Every key joins `seen`. A shard that
    cannot be opened has no key here (it is reported where it is read)."""
    repeats = []
    for shard_list, shard in shards:
        try:
            keys = index_keys(shard_list, shard)
        except ShardError:
            keys = []
        repeats.append(frozenset(k for k in keys if k in seen) or NO_KEYS)
        seen.update(keys)
    return repeats


def shard_entries(shard_list: Path, shard: Path, on_error: Callable[[BadItem], None] | None = None,
                  repeats: Container[str] = NO_KEYS) -> Iterator[ShardEntry]:
    """The entries of one shard of `shard_list`, from its cached index (built and cached when missing).
    A key or shard that cannot be used raises its `ShardError`, or goes to `on_error` and is passed over;
    so does an entry whose key is in `repeats` (`repeated_keys`: an earlier shard or manifest line has it)."""
    try:
        yield from usable(indexed_entries(shard_list, shard), on_error, shard, repeats)
    except ShardError as error:  # the shard cannot be opened at all
        if on_error is None:
            raise
        on_error(error)


def usable(entries: Iterator[ShardEntry | ShardError], on_error: Callable[[BadItem], None] | None, shard: Path,
           repeats: Container[str]) -> Iterator[ShardEntry]:
    for entry in entries:
        if isinstance(entry, ShardEntry) and entry.key in repeats:
            where = f"{shard}: key {entry.key}"
            entry = ShardError(f"{where}: the key appears before in this data (in an earlier shard or manifest line)",
                               "duplicate_key", source=where, key=entry.key)
        if isinstance(entry, ShardEntry):
            yield entry
        elif on_error is None:
            raise entry
        else:
            on_error(entry)


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
