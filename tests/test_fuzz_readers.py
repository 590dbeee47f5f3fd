"""Property-based tests of the readers that meet raw bytes (issue 13): a manifest line, a WAV, a tar shard.
Whatever the input, each returns a value or raises the project's documented error type (`BadItem`:
`ManifestError`, `AudioError`, `ShardError`), nothing else."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from conftest import wav_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osum_core.data.audio import load_audio
from osum_core.data.bad_items import BadItem
from osum_core.data.manifest import ManifestError, parse_manifest_line
from osum_core.data.shards import ShardEntry, ShardError, scan_shard

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
records = st.dictionaries(st.sampled_from(["key", "wav", "txt", "task", "extra", "emotion"]) | st.text(max_size=6),
                          json_values, max_size=6)


@FUZZ
@given(st.binary(max_size=200) | records.map(lambda r: json.dumps(r).encode()))
def test_a_manifest_line_parses_or_is_a_manifest_error(line):
    try:
        example = parse_manifest_line(Path("/data/m.jsonl"), 7, line)
    except ManifestError as error:
        assert str(error).startswith("/data/m.jsonl:7: ") and error.reason
        return
    assert all(isinstance(example[f], str) for f in ("key", "wav", "txt"))
    assert example["_source"] == "/data/m.jsonl:7"


WAV = wav_bytes(0.05)


def mutated(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    """`data` with byte positions overwritten (position modulo length, value)."""
    buffer = bytearray(data)
    for position, value in cuts:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.builds(mutated, st.just(WAV), edits),
                 st.integers(0, len(WAV)).map(lambda n: WAV[:n])))
def test_audio_bytes_decode_or_are_an_audio_error(data):
    try:
        wave = load_audio(io.BytesIO(data), name="x.tar: key k")
    except BadItem as error:
        assert str(error).startswith("x.tar: key k: ")
        return
    assert wave.ndim == 1 and len(wave) > 0 and bool(wave.isfinite().all())


def tar_bytes() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in (("a.wav", WAV), ("a.txt", b"one two"), ("a.extra", b'{"x": 1}'), ("b.wav", WAV),
                           ("b.task", b"<TRANSCRIBE>"), ("c.txt", b"no audio")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


TAR = tar_bytes()


@FUZZ
@given(st.one_of(st.binary(max_size=1200), st.builds(mutated, st.just(TAR), edits),
                 st.integers(0, len(TAR)).map(lambda n: TAR[:n])))
def test_a_shard_scans_to_entries_and_shard_errors(data):
    with tempfile.TemporaryDirectory() as folder:
        shard = Path(folder) / "s.tar"
        shard.write_bytes(data)
        try:
            entries = list(scan_shard(shard))
        except ShardError as error:
            assert str(shard) in str(error)
            return
        for entry in entries:
            assert isinstance(entry, ShardEntry | ShardError)
            if isinstance(entry, ShardError):
                assert str(shard) in str(entry) and entry.reason
            else:
                assert entry.offset >= 0 and entry.size >= 0 and entry.offset + entry.size <= len(data)
