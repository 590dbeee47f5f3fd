"""``osum data shard``: jsonl manifests -> OSUM/WeNet tar shards, a ``shards.list`` and their length index.

Audio is written as 16 kHz mono int16 wav (OSUM's ``make_shard_list_osum.py`` does the same), with every
label field of the manifest line: ``txt``, ``task``, ``lang``, ``speaker``, ``emotion``, ``gender``, a
``duration`` in seconds, and ``extra`` (JSON) holding every other field (``start``/``end`` of a segment
are applied, not kept)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import soundfile

from osum_core.data.audio import load_audio
from osum_core.data.dataset import example_source, record_span
from osum_core.data.features import SAMPLE_RATE
from osum_core.data.length_index import index_file, write_index
from osum_core.data.manifest import read_manifest
from osum_core.data.shards import TEXT_FIELDS, write_shard

LIST_NAME = "shards.list"


def wav_bytes(example: dict[str, Any]) -> tuple[bytes, float]:
    """The example's audio (its segment, for a line with ``start``/``end``) as 16 kHz mono int16 wav bytes,
    and its duration in seconds."""
    key = str(example.get("key"))
    span = record_span(example, example_source(example), key)
    wave = load_audio(example["wav"], SAMPLE_RATE, span=span)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.clamp(-1, 1).numpy(), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), len(wave) / SAMPLE_RATE


def shard_fields(example: dict[str, Any], duration: float) -> dict[str, Any]:
    fields = {k: v for k, v in example.items() if k in TEXT_FIELDS and v is not None}
    fields["key"] = example["key"]
    fields["duration"] = f"{duration:.4f}"
    extra = dict(example.get("extra") or {}) if isinstance(example.get("extra"), dict) else {}
    for name, value in example.items():
        if name not in (*TEXT_FIELDS, "key", "wav", "extra", "start", "end") and not name.startswith("_"):
            extra[name] = value
    if extra:
        fields["extra"] = extra
    return fields


def chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def shard_manifests(manifests: Sequence[str | Path], out_dir: str | Path, per_shard: int = 1000,
                    progress: Callable[[int], None] | None = None) -> Path:
    """Write the manifests' utterances as shards of `per_shard` into `out_dir`; returns the list file.
    `progress(n)` is called after each utterance written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    list_file = out / LIST_NAME
    examples = (example for manifest in manifests for example in read_manifest(manifest))
    names = []
    for number, chunk in enumerate(chunks(examples, max(per_shard, 1))):
        shard = out / f"shard-{number:06d}.tar"

        def utterances(chunk: list[dict[str, Any]] = chunk) -> Iterator[tuple[dict[str, Any], bytes]]:
            for example in chunk:
                data, duration = wav_bytes(example)
                yield shard_fields(example, duration), data
                if progress:
                    progress(1)

        entries = write_shard(shard, utterances())
        write_index(index_file(list_file, shard), shard, entries)
        names.append(shard.name)
    partial = list_file.with_name(list_file.name + ".partial")
    partial.write_text("".join(name + "\n" for name in names), encoding="utf-8")
    partial.replace(list_file)
    return list_file
