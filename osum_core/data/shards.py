"""OSUM/WeNet tar shards, read and written as OSUM does (`../OSUM.md` §3.1, `make_shard_list_osum.py`).

A shard is an uncompressed tar whose members are grouped by key: ``key.wav`` plus any of ``key.txt``,
``key.task``, ``key.lang``, ``key.speaker``, ``key.emotion``, ``key.gender``, ``key.duration`` and
``key.extra`` (JSON). The key is the member name up to its last dot, and one key's members are adjacent.

A shard is never read whole: `scan_shard` walks the tar headers (reading only the small text members),
and an utterance's audio is read later from its byte range (`read_wav_member`). The scan's result, one
`ShardEntry` per key, is the shard's length index (`osum_core.data.length_index` caches it).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile

from osum_core.data.bad_items import BadItem
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE

TEXT_FIELDS = ("txt", "task", "lang", "speaker", "emotion", "gender", "duration")
AUDIO_SUFFIXES = ("wav", "flac", "mp3", "ogg", "opus")
MAX_TEXT_MEMBER = 1 << 20  # a text member larger than this is not a label


class ShardError(BadItem):
    """A shard or one of its members that cannot be used; the message names the shard and the key."""

    reason = "shard_unreadable"

    def to_json(self) -> dict[str, Any]:  # an index row (`osum_core.data.length_index`) as well as a skip row
        return {**super().to_json(), "error": True}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ShardError:
        return cls(row["message"], row["reason"], source=row["source"], key=row["key"])


@dataclass(frozen=True)
class ShardEntry:
    """One utterance of a shard: its label fields (as a manifest line has them), where its audio lies in
    the tar (byte offset and size) and its length in feature frames."""

    key: str
    fields: dict[str, Any]
    offset: int
    size: int
    frames: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "fields": self.fields, "wav": [self.offset, self.size], "frames": self.frames}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ShardEntry:
        return cls(row["key"], row["fields"], row["wav"][0], row["wav"][1], row["frames"])

    def record(self, shard: Path) -> dict[str, Any]:
        """This utterance as a record (`osum_core.data.dataset`): its label fields, like a manifest line's,
        and where its audio lies."""
        return {
            **self.fields,
            "key": self.key,
            "wav": str(shard),
            "_member": (self.offset, self.size),
            "_frames": self.frames,
            "_source": f"{shard}: key {self.key}",
        }


def split_member_name(name: str) -> tuple[str, str]:
    """(key, suffix) of a member name such as ``dir/utt.1.wav`` -> (``dir/utt.1``, ``wav``)."""
    position = name.rfind(".")
    if position <= 0:
        return name, ""
    return name[:position], name[position + 1 :]


def duration_frames(value: Any) -> int | None:
    """Feature frames of a duration in seconds (a number, or its text as a ``.duration`` member holds it);
    None when it is not a positive, finite number."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return int(seconds * SAMPLE_RATE) // HOP_LENGTH if 0 < seconds < math.inf else None


def audio_header_frames(data: bytes, where: str) -> int:
    """Feature frames of an encoded audio member (from its header and length; the samples stay encoded)."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ShardError(f"{where}: audio is not readable ({error})", "audio_unreadable", source=where) from None
    return int(info.frames * SAMPLE_RATE / info.samplerate) // HOP_LENGTH


def entry_from_members(shard: Path, key: str, members: dict[str, tuple[int, int, bytes | None]]) -> ShardEntry:
    """The `ShardEntry` of one key's members: suffix -> (offset, size, content of text members)."""
    where = f"{shard}: key {key}"
    audio = next((s for s in AUDIO_SUFFIXES if s in members), None)

    def error(message: str) -> ShardError:
        return ShardError(f"{where}: {message}", "shard_member", source=where, key=key)

    if audio is None:
        raise error(f"no audio member (expected {key}.wav; found {', '.join(sorted(members))})")
    fields: dict[str, Any] = {"key": key}
    for suffix, (_, _, content) in members.items():
        if suffix in TEXT_FIELDS or suffix == "extra":
            if content is None:
                raise error(f"member {key}.{suffix} is too large for a label")
            try:
                text = content.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise error(f"member {key}.{suffix} is not UTF-8 text") from None
            if suffix == "extra":
                try:
                    fields["extra"] = json.loads(text) if text else {}
                except json.JSONDecodeError as problem:
                    raise ShardError(f"{where}: member {key}.extra is not JSON ({problem.msg})", "shard_member",
                                     source=where, key=key) from None
            else:
                fields[suffix] = text
    offset, size, _ = members[audio]
    return ShardEntry(key, fields, offset, size, frames=-1)


def scan_shard(path: str | Path) -> Iterator[ShardEntry | ShardError]:
    """Every utterance of a shard, in tar order, with its audio's byte range and length in frames; a key
    whose members cannot be used comes as a `ShardError` in its place (the scan goes on), and a tar cut
    short ends with one (the keys before the cut are kept). A key that comes again after its group (later
    in the tar, or as a second member with a suffix its group already has) is a `duplicate_key` error in
    its place: the first is kept.

    Reads the tar headers and the text members; each audio member is read once to measure it (the
    ``duration`` member is trusted instead when present). A shard that cannot be opened at all raises
    `ShardError`."""
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r|")  # stream mode: one pass, no member table kept in memory
    except (OSError, tarfile.TarError) as error:
        raise ShardError(f"{path}: cannot open shard ({error})", source=str(path)) from None
    key: str | None = None
    members: dict[str, tuple[int, int, bytes | None]] = {}
    kept: set[str] = set()  # the keys of this shard's usable entries so far (one shard's keys: small)
    with tar:
        try:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, suffix = split_member_name(info.name)
                if key is not None and (member_key != key or suffix in members):
                    yield unique_entry(path, finished_entry(path, key, members), kept)
                    members = {}
                key = member_key
                needs_content = (suffix in TEXT_FIELDS or suffix == "extra") and info.size <= MAX_TEXT_MEMBER
                content = tar.extractfile(info).read() if needs_content else None  # type: ignore[union-attr]
                if needs_content and len(content or b"") != info.size:
                    raise tarfile.ReadError(f"the tar ends inside {info.name}")
                members[suffix] = (info.offset_data, info.size, content)
                if suffix in AUDIO_SUFFIXES and "duration" not in members:
                    # Measured while the stream is at this member; a later `.duration` is not awaited.
                    data = tar.extractfile(info).read()  # type: ignore[union-attr]
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"the tar ends inside {info.name}")
                    try:
                        members["_frames"] = (0, audio_header_frames(data, f"{path}: key {member_key}"), None)
                    except ShardError as error:
                        error.key = member_key
                        members["_error"] = (0, 0, str(error).encode())
        except (tarfile.TarError, EOFError, OSError) as error:
            last = f" after key {key}" if key else ""
            yield ShardError(f"{path}: the tar is truncated or corrupt{last} ({error}); its later members are lost",
                             source=f"{path}: after key {key}" if key else str(path))
            return
        if key is not None:
            yield unique_entry(path, finished_entry(path, key, members), kept)


def unique_entry(path: Path, entry: ShardEntry | ShardError, kept: set[str]) -> ShardEntry | ShardError:
    """`entry`, or a `duplicate_key` error when a usable entry of the same shard (`kept`) has its key."""
    if isinstance(entry, ShardError):
        return entry
    if entry.key in kept:
        # Named by its byte offset too: each repeat is an item of its own (counted once per source).
        where = f"{path}: key {entry.key} at byte {entry.offset}"
        return ShardError(f"{where}: the key appears before in this shard", "duplicate_key", source=where, key=entry.key)
    kept.add(entry.key)
    return entry


def finished_entry(path: Path, key: str, members: dict[str, tuple[int, int, bytes | None]]) -> ShardEntry | ShardError:
    """The entry of one key's members, or the `ShardError` that says why the key cannot be used."""
    where = f"{path}: key {key}"
    unreadable = members.pop("_error", None)
    if unreadable is not None:
        return ShardError((unreadable[2] or b"").decode(), "audio_unreadable", source=where, key=key)
    measured = members.pop("_frames", None)
    try:
        entry = entry_from_members(path, key, members)
    except ShardError as error:
        return error
    if "duration" in entry.fields:
        frames = duration_frames(entry.fields["duration"])
        if frames is None:
            return ShardError(f"{where}: duration {entry.fields['duration']!r} is not a positive number of seconds",
                              "shard_member", source=where, key=key)
    elif measured is not None:
        frames = measured[1]
    else:
        return ShardError(f"{where}: audio could not be measured", "shard_member", source=where, key=key)
    return ShardEntry(entry.key, entry.fields, entry.offset, entry.size, frames)


def read_wav_member(path: str | Path, offset: int, size: int) -> bytes:
    """The bytes of one audio member (a seek and one read: the rest of the shard is not touched)."""
    with open(path, "rb") as shard:
        shard.seek(offset)
        data = shard.read(size)
    if len(data) != size:
        raise ShardError(f"{path}: audio at byte {offset} is cut short (the shard is truncated)", "audio_unreadable")
    return data


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, utterances: Iterable[tuple[dict[str, Any], bytes]]) -> list[ShardEntry | ShardError]:
    """Write one shard from (label fields, 16 kHz int16 wav bytes) pairs; returns its index (with the error
    of each key that cannot be used, e.g. a key given twice). Written to a temporary name and renamed, so a
    shard on disk is always complete."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for fields, wav in utterances:
            key = str(fields["key"])
            add_member(tar, f"{key}.wav", wav)
            for name in TEXT_FIELDS:
                if name in fields and fields[name] is not None:
                    add_member(tar, f"{key}.{name}", str(fields[name]).encode("utf-8"))
            if fields.get("extra") is not None:
                add_member(tar, f"{key}.extra", json.dumps(fields["extra"], ensure_ascii=False).encode("utf-8"))
    partial.replace(path)
    return list(scan_shard(path))
