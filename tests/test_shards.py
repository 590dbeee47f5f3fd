"""OSUM/WeNet tar shards: written by `osum data shard`, read as OSUM writes them, indexed once, and every
broken shard reported with its path and key."""

import io
import json
import re
from pathlib import Path

import pytest
from conftest import wav_bytes, write_tar

from osum_core.cli.main import main
from osum_core.data.audio import load_audio
from osum_core.data.dataset import load_example_audio, prepare_example
from osum_core.data.length_index import index_dir, read_shard_list, shard_entries
from osum_core.data.manifest import read_manifest
from osum_core.data.shards import ShardError, scan_shard

wav = wav_bytes


@pytest.fixture(scope="module")
def sharded(tiny_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "shard", str(tiny_corpus / "train.jsonl"), str(out), "--per-shard", "10", "--quiet"]) == 0
    return out / "shards.list"


def test_osum_data_shard_keeps_every_utterance_its_labels_and_its_audio(sharded, tiny_corpus):
    lines = read_manifest(tiny_corpus / "train.jsonl")
    shards = read_shard_list(sharded)
    assert len(shards) == -(-len(lines) // 10)
    assert index_dir(sharded).is_dir() and len(list(index_dir(sharded).iterdir())) == len(shards)
    entries = {e.key: (shard, e) for shard in shards for e in shard_entries(sharded, shard)}
    assert list(entries) == [line["key"] for line in lines]
    from osum_core.plugins import load_tasks

    tasks = {t.tag: t for t in load_tasks().select(["asr", "ved"])}
    for line in lines:
        shard, entry = entries[line["key"]]
        record = entry.record(shard)
        for field in ("txt", "task"):
            assert record[field] == line[field]
        task = tasks[line["task"]]
        from_shard = prepare_example(record, task, _Words())
        from_file = prepare_example(line, task, _Words())
        assert from_shard.target == from_file.target and abs(from_shard.frames - from_file.frames) <= 1
        # The shard holds the same samples (16 kHz int16), read back by seeking to the member.
        shard_wave, file_wave = load_example_audio(from_shard), load_audio(line["wav"])
        assert shard_wave.shape == file_wave.shape
        assert float((shard_wave - file_wave).abs().max()) < 1e-3


class _Words:
    def encode(self, text, add_special_tokens=False):
        return [len(w) for w in text.split()]


def test_shards_written_by_others_read_as_osum_writes_them(tmp_path):
    # Keys with dots, any member order, stereo 44.1 kHz audio, no .duration, JSON extra, a subset of fields.
    shard = write_tar(tmp_path / "other.tar", [
        ("spk1/utt.1.txt", "hello world".encode()),
        ("spk1/utt.1.wav", wav(1.5, 44100, 2)),
        ("spk1/utt.1.task", b"<TRANSCRIBE>"),
        ("spk1/utt.1.extra", json.dumps({"source": "x"}).encode()),
        ("utt2.wav", wav(0.5)),
        ("utt2.txt", "你好".encode()),
        ("utt2.gender", b"female"),
    ])
    (tmp_path / "shards.list").write_text("other.tar\n")
    entries = list(shard_entries(tmp_path / "shards.list", shard))
    assert [e.key for e in entries] == ["spk1/utt.1", "utt2"]
    first, second = entries
    assert first.fields == {"key": "spk1/utt.1", "txt": "hello world", "task": "<TRANSCRIBE>", "extra": {"source": "x"}}
    assert second.fields["gender"] == "female" and "task" not in second.fields
    assert first.frames == 150 and second.frames == 50
    wave = load_audio(io.BytesIO(shard.read_bytes()[first.offset : first.offset + first.size]))
    assert wave.shape == (24000,)  # mono, resampled to 16 kHz


def test_broken_shards_are_named_with_their_key(tmp_path):
    # A key without audio comes as its error, in its place; the scan goes on.
    no_audio = write_tar(tmp_path / "no_audio.tar", [("a.wav", wav(0.3)), ("a.txt", b"x"), ("b.txt", b"y"),
                                                      ("c.wav", wav(0.2))])
    first, error, last = scan_shard(no_audio)
    assert first.key == "a" and last.key == "c"
    assert isinstance(error, ShardError) and error.reason == "shard_member" and error.key == "b"
    assert re.search(r"no_audio.tar: key b: no audio member", str(error))
    # A tar cut short keeps the keys before the cut and ends with the error.
    good = write_tar(tmp_path / "good.tar", [(f"u{i}.wav", wav(0.5)) for i in range(4)])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    *kept, error = scan_shard(truncated)
    assert [e.key for e in kept] == ["u0", "u1"] and isinstance(error, ShardError)  # u2 is cut
    assert re.search(r"truncated.tar: .*(truncated|ends inside)", str(error)) and error.reason == "shard_unreadable"
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match=r"garbage.tar"):
        list(scan_shard(tmp_path / "garbage.tar"))
    (tmp_path / "missing.list").write_text("good.tar\n\nnowhere.tar\n")
    with pytest.raises(ShardError, match=r"missing.list:3: shard .*nowhere.tar not found"):
        read_shard_list(tmp_path / "missing.list")


def test_the_index_is_cached_and_rebuilt_when_the_shard_changes(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.wav", wav(0.3)), ("a.txt", b"one")])
    listing = tmp_path / "shards.list"
    listing.write_text("s.tar\n")
    assert [e.fields["txt"] for e in shard_entries(listing, shard)] == ["one"]
    cached = next(index_dir(listing).iterdir())
    header, keys, entry = map(json.loads, cached.read_text().splitlines())
    assert header["count"] == 1 and keys == ["a"] and entry["fields"]["txt"] == "one"
    write_tar(shard, [("a.wav", wav(0.3)), ("a.txt", b"two"), ("b.wav", wav(0.2))])
    assert [e.fields.get("txt") for e in shard_entries(listing, shard)] == ["two", None]


def test_osum_data_check_reports_counts_and_every_broken_item(sharded, tiny_corpus, tmp_path, capsys):
    assert main(["data", "check", str(sharded), "--tasks", "asr,ved", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    lines = read_manifest(tiny_corpus / "train.jsonl")
    assert report["items"] == len(lines) and report["errors"] == 0
    assert report["tasks"] == {"asr": sum(1 for x in lines if x["task"] == "<TRANSCRIBE>"),
                               "ved": sum(1 for x in lines if x["task"] != "<TRANSCRIBE>")}
    assert sum(report["labels"]["ved"].values()) == report["tasks"]["ved"]
    assert sum(report["durations"].values()) == report["items"] and report["hours"] > 0

    broken = tmp_path / "broken.jsonl"
    good = lines[0]
    (tmp_path / "empty.wav").write_bytes(b"")
    broken.write_text("\n".join([
        json.dumps({k: v for k, v in good.items() if not k.startswith("_")}),
        "{not json",
        json.dumps({"key": "nolabel", "wav": good["wav"], "txt": "one", "task": "<TRANSCRIBE> <CAPTION>"}),
        json.dumps({"key": "noaudio", "wav": "empty.wav", "txt": "one two"}),
    ]) + "\n")
    assert main(["data", "check", str(broken), "--tasks", "asr,ved", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{broken}:2: not valid JSON" in err
    assert f"{broken}:3: task ved" in err
    assert f"{broken}:4" in err and "empty.wav" in err


def test_osum_test_scores_shards_as_it_scores_their_manifest(run_dir, tiny_corpus, tmp_path):
    assert main(["data", "shard", str(tiny_corpus / "test.jsonl"), str(tmp_path / "s"), "--per-shard", "5", "--quiet"]) == 0
    common = ["test", "--ckpt", str(run_dir), "--tasks", "asr,ved", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "from_manifest"), f"data.test={tiny_corpus / 'test.jsonl'}"]) == 0
    assert main([*common, "--out", str(tmp_path / "from_shards"), f"data.test={tmp_path / 's' / 'shards.list'}"]) == 0
    read = lambda name: json.loads((tmp_path / name / "metrics.json").read_text())  # noqa: E731
    assert read("from_shards") == read("from_manifest")
