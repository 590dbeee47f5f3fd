"""The length index at scale: keys repeated across a split's shards found in one pass over the indexes'
key lines, an index written safely by processes of several hosts at once, an index of an older format
rebuilt, and token ids remembered across an epoch's planning passes without changing its plan."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wav_bytes, write_tar

from osum_core.data.check import check_data
from osum_core.data.dataset import TokenCache
from osum_core.data.length_index import index_file, repeated_keys, shard_entries, write_index
from osum_core.data.shards import ShardError, scan_shard
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule


def shard_of(path: Path, keys: list[str]) -> Path:
    return write_tar(path, [m for k in keys for m in ((f"{k}.wav", wav_bytes(0.3)), (f"{k}.txt", f"say {k}".encode()))])


def test_keys_repeated_across_shards_are_found_in_the_splits_order(tmp_path):
    one, two = shard_of(tmp_path / "one.tar", ["a", "b"]), shard_of(tmp_path / "two.tar", ["b", "c"])
    three = shard_of(tmp_path / "three.tar", ["c", "m", "d"])
    first, second = tmp_path / "first.list", tmp_path / "second.list"
    first.write_text("one.tar\ntwo.tar\n")
    second.write_text("three.tar\none.tar\n")
    # Two lists of one split, a manifest's key `m` before them, and one.tar named twice (a position repeats, not a path).
    shards = [(first, one), (first, two), (second, three), (second, one)]
    seen = {"m"}
    repeats = repeated_keys(shards, seen)
    assert repeats == [set(), {"b"}, {"c", "m"}, {"a", "b"}] and seen == {"a", "b", "c", "d", "m"}
    skipped = []
    kept = [e.key for (listing, shard), r in zip(shards, repeats, strict=True) for e in shard_entries(listing, shard, skipped.append, r)]
    assert kept == ["a", "b", "c", "d"]
    assert [(e.source, e.reason) for e in skipped] == [
        (f"{two}: key b", "duplicate_key"), (f"{three}: key c", "duplicate_key"), (f"{three}: key m", "duplicate_key"),
        (f"{one}: key a", "duplicate_key"), (f"{one}: key b", "duplicate_key")]
    assert str(skipped[0]) == f"{two}: key b: the key appears before in this data (in an earlier shard or manifest line)"
    with pytest.raises(ShardError, match=r"two.tar: key b: the key appears before in this data"):
        list(shard_entries(first, two, None, repeats[1]))
    # The pass reads each index's key line, not its entries: here from the indexes it built a moment ago.
    assert json.loads(index_file(second, three).read_text().splitlines()[1]) == ["c", "m", "d"]


def test_training_passes_over_keys_repeated_across_a_splits_shards_and_manifests(tmp_path):
    from test_bad_inputs import datamodule

    shard_of(tmp_path / "one.tar", ["a", "b"])
    two = shard_of(tmp_path / "two.tar", ["b", "c", "m"])
    (tmp_path / "shards.list").write_text("one.tar\ntwo.tar\n")
    (tmp_path / "ok.wav").write_bytes(wav_bytes(0.5))
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "m", "wav": "ok.wav", "txt": "one"}) + "\n")
    for workers in (1, 2):  # whichever stream reads which shard
        module = datamodule([str(tmp_path / "m.jsonl"), str(tmp_path / "shards.list")], num_workers=workers)
        assert sorted(i.example.key for b in module.plan("val").batches(0) for i in b) == ["a", "b", "c", "m"]
        assert sorted(i.example.key for b in module.plan("train").batches(0, 0, 1, workers) for i in b) == ["a", "b", "c", "m"]
        assert sorted((r["source"], r["reason"]) for r in module.skips.rows) == [
            (f"{two}: key b", "duplicate_key"), (f"{two}: key m", "duplicate_key")]


def test_osum_data_check_finds_the_repeats_training_finds(tmp_path):
    shard_of(tmp_path / "one.tar", ["a", "b", "a"])  # `a` repeated inside a shard
    shard_of(tmp_path / "two.tar", ["b", "m", "c"])  # `b` across shards, `m` after the manifest
    (tmp_path / "shards.list").write_text("one.tar\ntwo.tar\n")
    (tmp_path / "ok.wav").write_bytes(wav_bytes(0.5))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"key": "m", "wav": "ok.wav", "txt": "one", "duration": 2.0}) + "\n")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("first: {path: m.jsonl}\nsecond: {path: shards.list}\n")
    registry = load_tasks()
    report = check_data(mixture, registry.select(["asr"]), known_tasks=list(registry.tasks.values()))
    assert report.items == 4 and report.reasons == {"duplicate_key": 3, "wrong_type": 1}
    errors = "\n".join(report.errors)
    assert "one.tar: key a at byte" in errors and "two.tar: key b: the key appears before" in errors
    assert "two.tar: key m: the key appears before" in errors
    # The line's duration is trusted while planning; the check decodes the audio and says when it is wrong.
    assert f"{manifest}:1: field 'duration' says 2.0 s, the audio has 0.500 s" in errors


def test_two_writers_of_one_index_with_the_same_pid_do_not_collide(tmp_path, monkeypatch):
    # Two hosts can give their processes the same pid; here the second writer starts while the first writes.
    shard = shard_of(tmp_path / "s.tar", ["a"])
    listing = tmp_path / "shards.list"
    listing.write_text("s.tar\n")
    path = index_file(listing, shard)
    entries = list(scan_shard(shard))
    monkeypatch.setattr(os, "getpid", lambda: 4242)

    class Interrupted:
        key = "a"

        def to_json(self):
            write_index(path, shard, entries)
            return entries[0].to_json()

    write_index(path, shard, [Interrupted()])
    assert [e.key for e in shard_entries(listing, shard)] == ["a"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_an_index_of_an_older_format_is_built_again(tmp_path):
    shard = shard_of(tmp_path / "s.tar", ["a", "b", "a"])
    listing = tmp_path / "shards.list"
    listing.write_text("s.tar\n")
    path = index_file(listing, shard)
    path.parent.mkdir()
    # Version 1: no version, no key line, and the repeated `a` an entry like any other.
    stat = shard.stat()
    header = {"shard": str(shard), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "count": 3}
    a, b, _ = (e.to_json() for e in scan_shard(shard))
    path.write_text("".join(json.dumps(row) + "\n" for row in (header, a, b, a)))
    skipped = []
    assert [e.key for e in shard_entries(listing, shard, skipped.append)] == ["a", "b"]
    assert [e.reason for e in skipped] == ["duplicate_key"]


# -- token ids, remembered -----------------------------------------------------------------------------
class CountingWords:
    eos_token_id = 1

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text, add_special_tokens=False):
        self.calls += 1
        return [2 + len(w) for w in text.split()]


@pytest.fixture
def shards(tmp_path) -> Path:
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    for number in range(3):
        members = []
        for i in range(8):
            key = f"s{number}u{i}"
            ved = i % 3 == 0
            text = " ".join(words[(i + number + j) % 7] for j in range(1 + i % 4)) + ("<laugh>" if ved else "")
            members += [(f"{key}.wav", wav_bytes(0.2 + 0.1 * (i % 5))), (f"{key}.txt", text.encode()),
                        (f"{key}.task", b"<TRANSCRIBE> <CAPTION>" if ved else b"<TRANSCRIBE>")]
        write_tar(tmp_path / f"{number}.tar", members)
    (tmp_path / "shards.list").write_text("0.tar\n1.tar\n2.tar\n")
    return tmp_path / "shards.list"


def plan_of(train: Path, tokenizer):
    from osum_core.config import fit_config

    cfg = {**fit_config(overrides=["data.num_workers=0"])["data"], "train": str(train), "max_frames": 200}
    tasks = {t.name: t for t in load_tasks().select(["asr", "ved"])}
    module = SpeechDataModule(cfg, tasks, tokenizer, seed=3, ctc_target="transcript",
                              sequence_length=lambda frames, prompt, target, per_step: frames // 8 + prompt + target)
    return module.plan("train")


def batches(plan, epoch):
    return [[(i.example.key, i.example.task, i.example.transcript_ids, i.example.body_ids, i.example.suffix_ids,
              i.example.frames, i.draw) for i in batch] for batch in plan.batches(epoch, 0, 1, 2)]


def test_a_plan_is_the_same_with_and_without_remembered_token_ids(shards):
    cached = plan_of(shards, CountingWords())
    uncached = plan_of(shards, CountingWords())
    uncached.preparer = replace(uncached.preparer, cached_texts=0)
    for epoch in (0, 1):
        expected = batches(uncached, epoch)
        assert sum(len(b) for b in expected) == 24 and batches(cached, epoch) == expected


def test_a_second_pass_over_an_epoch_tokenises_nothing_again(shards):
    words = CountingWords()
    plan = plan_of(shards, words)
    first = batches(plan, 0)
    tokenised = words.calls
    assert tokenised and batches(plan, 0) == first and words.calls == tokenised


def test_remembered_texts_are_bounded():
    words = CountingWords()
    cache = TokenCache(words, size=2)
    assert [cache.encode(t) for t in ("a", "b b", "a", "c c c")] == [(3,), (3, 3), (3,), (3, 3, 3)]
    assert words.calls == 3 and list(cache.texts) == ["a", "c c c"]  # `b b` went first: least recently used
