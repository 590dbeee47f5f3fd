"""Bad input, case by case (issue 13): each case is fed to the reader that training uses and must come
back as a `BadItem` whose message names the file and line (or shard and key) and the field, with its
reason; ``data.on_error: skip`` passes over it and counts it, ``raise`` stops at it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import wav_bytes, write_tar

from osum_core.data.audio import AudioError, load_audio
from osum_core.data.bad_items import REASONS, BadItem, SkipLog
from osum_core.data.collate import collate_examples
from osum_core.data.dataset import SpeechDataset
from osum_core.data.manifest import read_manifest
from osum_core.plugins import load_tasks
from osum_core.train.datamodule import SpeechDataModule


class Words:
    eos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [2 + len(w) for w in text.split()]


def noise(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32)


def write_wav(path: Path, seconds: float = 0.5, **kwargs) -> Path:
    soundfile.write(path, noise(seconds), 16000, **kwargs)
    return path


def datamodule(train, tasks=("asr", "ved"), on_error="skip", **changes) -> SpeechDataModule:
    from osum_core.config import fit_config

    cfg = {**fit_config(overrides=["data.num_workers=0"])["data"], "train": train, "val": train,
           "on_error": on_error, **changes}
    registry = load_tasks()
    selected = {t.name: t for t in registry.select(list(tasks))}
    return SpeechDataModule(cfg, selected, Words(), seed=5, ctc_target="transcript",
                            sequence_length=lambda frames, prompt, target, per_step: frames // 8 + prompt + target,
                            known_tasks=list(registry.tasks.values()), max_input_frames=300)


def planned_keys(module: SpeechDataModule, split: str = "val") -> list[str]:
    return [item.example.key for batch in module.plan(split).batches(0) for item in batch]


def skipped(module: SpeechDataModule) -> dict[str, dict]:
    """reason -> the one skipped row with that reason."""
    rows = module.skips.rows
    assert len({r["reason"] for r in rows}) == len(rows), rows
    return {r["reason"]: r for r in rows}


@pytest.fixture
def folder(tmp_path) -> Path:
    write_wav(tmp_path / "ok.wav")
    return tmp_path


def manifest(folder: Path, lines: list, name: str = "m.jsonl") -> Path:
    path = folder / name
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines))
    return path


GOOD = {"key": "good", "wav": "ok.wav", "txt": "one two"}

# (reason, the bad line, what the message must name)
MANIFEST_CASES = [
    ("not_json", b"{not json\n", r"not valid JSON"),
    ("not_json", b"[1, 2]\n", r"expected a JSON object"),
    ("missing_field", {"key": "k", "wav": "ok.wav"}, r"missing field\(s\) txt"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": 5}, r"field 'txt' must be a string, got int 5"),
    ("wrong_type", {"key": "k", "wav": ["ok.wav"], "txt": "one"}, r"field 'wav' must be a string, got list"),
    ("unknown_task", {"key": "k", "wav": "ok.wav", "txt": "one", "task": "<NOPE>"}, r"key k: unknown task tag '<NOPE>'"),
    ("bad_target", {"key": "k", "wav": "ok.wav", "txt": "one <kazoo>", "task": "<TRANSCRIBE> <CAPTION>"},
     r"task ved: .*kazoo"),
    ("empty_transcript", {"key": "k", "wav": "ok.wav", "txt": "  "}, r"key k: the transcript is empty and task asr adds no label"),
    ("not_utf8", b'{"key": "k", "wav": "ok.wav", "txt": "caf\xe9"}\n', r"not UTF-8 text"),
    ("audio_missing", {"key": "k", "wav": "gone.wav", "txt": "one"}, r"gone.wav is missing"),
    # A duration is trusted instead of the header, but the file must still be there.
    ("audio_missing", {"key": "k", "wav": "gone.wav", "txt": "one", "duration": 1.5}, r"audio file .*gone.wav is missing"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": "one", "duration": 0},
     r"key k: field 'duration' must be a positive number of seconds, got 0$"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": "one", "duration": -2.5}, r"field 'duration' .* got -2.5$"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": "one", "duration": "soon"}, r"field 'duration' .* got \"soon\"$"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": "one", "duration": True}, r"field 'duration' .* got true$"),
    ("wrong_type", {"key": "k", "wav": "ok.wav", "txt": "one", "duration": None}, r"field 'duration' .* got null$"),
]


@pytest.mark.parametrize(("reason", "line", "named"), MANIFEST_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MANIFEST_CASES)])
def test_a_bad_manifest_line_is_skipped_and_named(folder, reason, line, named):
    path = manifest(folder, [GOOD, line, {**GOOD, "key": "after"}])
    module = datamodule(str(path))
    assert planned_keys(module) == ["good", "after"]  # the lines around it are kept
    row = skipped(module)[reason]
    assert row["source"] == f"{path}:2"
    assert row["message"].startswith(f"{path}:2: ")
    assert re.search(named, row["message"]), row["message"]
    # With on_error=raise the same line stops planning, with the same message.
    with pytest.raises(BadItem, match=re.escape(row["message"][:60])):
        datamodule(str(path), on_error="raise").plan("val")


def test_a_tag_of_an_installed_but_unselected_task_is_not_an_error(folder):
    path = manifest(folder, [GOOD, {"key": "e", "wav": "ok.wav", "txt": "one <happy>", "task": "<TRANSCRIBE> <EMOTION>"}])
    module = datamodule(str(path), tasks=("asr",))
    assert planned_keys(module) == ["good"] and module.skips.rows == [] and module.unselected["val"] == 1


def test_duplicate_keys_keep_the_first(folder):
    path = manifest(folder, [GOOD, {**GOOD, "txt": "three"}])
    module = datamodule(str(path))
    assert planned_keys(module) == ["good"]
    row = skipped(module)["duplicate_key"]
    assert row["source"] == f"{path}:2" and "key good appears before" in row["message"]


def test_a_lines_duration_is_trusted_without_opening_its_audio(folder):
    # Not audio at all: without a duration the header fails while planning; with one, only loading finds it.
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    path = manifest(folder, [{**GOOD, "duration": 1.23}, {"key": "t", "wav": "text.wav", "txt": "one", "duration": 0.5}])
    module = datamodule(str(path))
    items = {item.example.key: item for batch in module.plan("val").batches(0) for item in batch}
    assert {k: i.example.frames for k, i in items.items()} == {"good": 123, "t": 50}  # as a shard's .duration
    assert module.skips.rows == []
    assert dataset(module)[items["t"]]["skipped"]["reason"] == "audio_unreadable"


def test_a_byte_order_mark_and_crlf_line_ends_are_read(folder):
    path = folder / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps({**GOOD, "key": "b"}).encode() + b"\r\n")
    assert [line["key"] for line in read_manifest(path)] == ["good", "b"]
    module = datamodule(str(path))
    assert planned_keys(module) == ["good", "b"] and module.skips.rows == []


def test_an_empty_manifest_is_named(folder):
    empty = folder / "empty.jsonl"
    empty.write_text("\n\n")
    path = manifest(folder, [GOOD])
    module = datamodule([str(path), str(empty)])
    assert planned_keys(module) == ["good"]
    assert skipped(module)["empty_file"]["message"] == f"{empty}: the manifest is empty"
    with pytest.raises(BadItem, match="empty.jsonl: the manifest is empty"):
        datamodule([str(path), str(empty)], on_error="raise").plan("val")


# -- audio -------------------------------------------------------------------------------------------
def corrupt_audio(folder: Path) -> dict[str, Path]:
    """One file per kind of broken audio: reason -> path."""
    (folder / "zero.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    good = (folder / "ok.wav").read_bytes()
    (folder / "header_only.wav").write_bytes(good[:20])  # cut inside the header
    return {"audio_empty": folder / "zero.wav", "audio_unreadable": folder / "text.wav",
            "audio_unreadable_cut": folder / "header_only.wav"}


def test_broken_audio_files_are_skipped_while_planning(folder):
    files = corrupt_audio(folder)
    lines = [GOOD] + [{"key": name, "wav": path.name, "txt": "one"} for name, path in files.items()]
    path = manifest(folder, lines)
    module = datamodule(str(path))
    assert planned_keys(module) == ["good"]
    rows = module.skips.rows
    assert [(r["key"], r["reason"]) for r in rows] == [
        ("audio_empty", "audio_empty"), ("audio_unreadable", "audio_unreadable"),
        ("audio_unreadable_cut", "audio_unreadable")]
    for number, row in enumerate(rows, start=2):
        assert row["source"] == f"{path}:{number}" and str(files[row["key"]]) in row["message"]


def dataset(module: SpeechDataModule, on_error: str = "skip") -> SpeechDataset:
    data = module.dataset("val")
    data.on_error = on_error
    return data


@pytest.mark.parametrize(("reason", "samples"), [
    ("audio_not_finite", np.array([0.1, math.nan, 0.2] * 2000, dtype=np.float32)),
    ("audio_not_finite", np.array([0.1, math.inf, 0.2] * 2000, dtype=np.float32)),
    ("audio_silent", np.zeros(6000, dtype=np.float32)),
])
def test_audio_that_decodes_to_nan_or_silence_is_skipped_when_loaded(folder, reason, samples):
    soundfile.write(folder / "bad.wav", samples, 16000, subtype="FLOAT")
    path = manifest(folder, [GOOD, {"key": "bad", "wav": "bad.wav", "txt": "one"}])
    module = datamodule(str(path))
    items = [item for batch in module.plan("val").batches(0) for item in batch]
    assert sorted(i.example.key for i in items) == ["bad", "good"]  # the header is fine: found when loaded
    items.sort(key=lambda i: i.example.key != "good")
    loaded = [dataset(module)[item] for item in items]
    batch = collate_examples(loaded)
    assert batch["keys"] == ["good"] and batch["features"].shape[0] == 1
    [row] = batch["skipped"]
    assert row["reason"] == reason and row["key"] == "bad" and row["source"] == f"{path}:2"
    assert "bad.wav" in row["message"]
    with pytest.raises(AudioError, match="bad.wav: audio"):
        dataset(module, on_error="raise")[items[1]]


def cut_in_half(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize("kind", ["wav", "flac", "flac-corrupt"])
def test_truncated_or_corrupt_wav_and_flac_are_skipped_when_loaded(folder, kind):
    # Their headers read (planning keeps them); decoding finds the damage.
    source = write_wav(folder / f"whole.{kind[:4]}", seconds=1.0)
    bad = folder / f"bad.{kind[:4]}"
    if kind == "flac-corrupt":
        data = bytearray(source.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 200] = b"\xff" * 200
        bad.write_bytes(bytes(data))
    else:
        cut_in_half(source, bad)
    path = manifest(folder, [GOOD, {"key": "bad", "wav": bad.name, "txt": "one"}])
    module = datamodule(str(path))
    items = sorted((i for b in module.plan("val").batches(0) for i in b), key=lambda i: i.example.key)
    row = dataset(module)[items[0]]["skipped"]
    assert items[0].example.key == "bad" and row["reason"] == "audio_unreadable" and row["source"] == f"{path}:2"
    assert str(bad) in row["message"] and ("truncated" in row["message"] or "cannot read audio" in row["message"])


def test_a_batch_whose_every_item_failed_is_empty_not_an_error(folder):
    soundfile.write(folder / "bad.wav", np.zeros(6000, dtype=np.float32), 16000)
    path = manifest(folder, [{"key": "bad", "wav": "bad.wav", "txt": "one"}])
    module = datamodule(str(path))
    [item] = [item for batch in module.plan("val").batches(0) for item in batch]
    batch = collate_examples([dataset(module)[item]])
    assert batch["keys"] == [] and "features" not in batch and batch["skipped"][0]["reason"] == "audio_silent"


def test_any_exception_while_loading_an_item_costs_that_item_only(folder):
    path = manifest(folder, [GOOD])
    module = datamodule(str(path))
    [item] = [item for batch in module.plan("val").batches(0) for item in batch]
    data = dataset(module)
    data.log_mel = lambda wave: (_ for _ in ()).throw(RuntimeError("feature extractor exploded"))
    row = data[item]["skipped"]
    assert row["reason"] == "load_failed" and "RuntimeError: feature extractor exploded" in row["message"]
    assert row["source"] == f"{path}:1"


def test_too_long_audio_is_skipped_or_cropped_by_setting(folder):
    write_wav(folder / "long.wav", seconds=4.0)  # 400 frames; the test model takes 300
    path = manifest(folder, [GOOD, {"key": "long", "wav": "long.wav", "txt": "one"}])
    module = datamodule(str(path))
    assert planned_keys(module) == ["good"]
    assert "longer than the model's 3.0 s (data.too_long=crop" in skipped(module)["too_long"]["message"]
    cropped = datamodule(str(path), too_long="crop")
    items = [item for batch in cropped.plan("val").batches(0) for item in batch]
    assert [(i.example.key, i.example.frames) for i in items] == [("good", 50), ("long", 300)]
    assert dataset(cropped)[items[1]]["features"].shape[0] == 300


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_every_rate_and_channel_count_reads_as_16k_mono(tmp_path, rate, channels):
    t = np.arange(rate // 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", np.stack([tone] * channels, axis=1), rate)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.shape == (8000,) and wave.dtype == torch.float32
    assert 0.4 < float(wave.abs().max()) < 0.6


@pytest.mark.parametrize(("subtype", "tolerance"), [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6),
                                                     ("PCM_32", 1e-6), ("FLOAT", 1e-7)])
def test_every_bit_depth_reads_as_the_same_signal(tmp_path, subtype, tolerance):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", tone, 16000, subtype=subtype)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.shape == (8000,) and float((wave - torch.from_numpy(tone)).abs().max()) < tolerance


# -- shards ------------------------------------------------------------------------------------------
def test_bad_shards_are_skipped_and_named(tmp_path):
    write_tar(tmp_path / "good.tar", [("a.wav", wav_bytes(0.3)), ("a.txt", b"one two")])
    no_wav = write_tar(tmp_path / "no_wav.tar", [("b.txt", b"three"), ("c.wav", wav_bytes(0.3)), ("c.txt", b"four")])
    whole = write_tar(tmp_path / "whole.tar", [(f"d{i}.wav", wav_bytes(0.5)) for i in range(4)]
                      + [(f"d{i}.txt", b"five") for i in range(4)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (tmp_path / "garbage.tar").write_bytes(b"\x00garbage" * 300)
    listing = tmp_path / "shards.list"
    listing.write_text("good.tar\nno_wav.tar\ncut.tar\ngarbage.tar\nnowhere.tar\n")
    module = datamodule(str(listing))
    keys = planned_keys(module)
    assert "a" in keys and "c" in keys and "b" not in keys
    rows = {r["reason"]: r for r in module.skips.rows}
    assert rows["shard_member"]["key"] == "b" and f"{no_wav}: key b: no audio member" in rows["shard_member"]["message"]
    assert rows["shard_missing"]["source"] == f"{listing}:5" and "nowhere.tar not found" in rows["shard_missing"]["message"]
    unreadable = [r for r in module.skips.rows if r["reason"] == "shard_unreadable"]
    assert any("cut.tar: the tar is truncated" in r["message"] for r in unreadable)
    assert any("garbage.tar" in r["message"] for r in unreadable)
    # The index remembers the bad keys: a second planning pass (a new process) reports the same.
    again = datamodule(str(listing))
    assert planned_keys(again) == keys
    assert sorted((r["source"], r["reason"]) for r in again.skips.rows) == sorted(
        (r["source"], r["reason"]) for r in module.skips.rows)
    with pytest.raises(ValueError, match="shards.list:5: shard .*nowhere.tar not found"):
        datamodule(str(listing), on_error="raise").plan("val")


def test_a_key_repeated_inside_a_shard_is_a_duplicate(tmp_path):
    # `a` again later in the tar; `c` again right after its own group (a second c.wav).
    shard = write_tar(tmp_path / "s.tar", [
        ("a.wav", wav_bytes(0.3)), ("a.txt", b"one"), ("b.wav", wav_bytes(0.3)), ("b.txt", b"two"),
        ("a.wav", wav_bytes(0.4)), ("a.txt", b"three"), ("c.wav", wav_bytes(0.3)), ("c.txt", b"four"),
        ("c.wav", wav_bytes(0.5)), ("c.txt", b"five"), ("d.wav", wav_bytes(0.3)), ("d.txt", b"six")])
    listing = tmp_path / "shards.list"
    listing.write_text("s.tar\n")

    def planned(module):
        return [(i.example.key, i.example.target.transcript) for b in module.plan("val").batches(0) for i in b]

    module = datamodule(str(listing))
    assert planned(module) == [("a", "one"), ("b", "two"), ("c", "four"), ("d", "six")]  # the first is kept
    rows = module.skips.rows
    assert [(r["key"], r["reason"]) for r in rows] == [("a", "duplicate_key"), ("c", "duplicate_key")]
    for row in rows:
        assert row["message"] == f"{row['source']}: the key appears before in this shard"
        assert re.fullmatch(rf"{re.escape(str(shard))}: key {row['key']} at byte \d+", row["source"])
    again = datamodule(str(listing))  # from the cached index, as another process would
    assert planned(again) == planned(module) and again.skips.rows == rows
    with pytest.raises(BadItem, match=r"s.tar: key a at byte \d+: the key appears before in this shard"):
        planned(datamodule(str(listing), on_error="raise"))


# -- the skip log -------------------------------------------------------------------------------------
def test_the_skip_log_counts_each_item_once_and_survives_a_restart(tmp_path):
    log = SkipLog(tmp_path / "skipped.jsonl")
    error = BadItem("m.jsonl:3: not valid JSON", "not_json")
    assert log.add(error) and not log.add(error)  # the same item again (a later epoch) is not counted twice
    log.add(AudioError("m.jsonl:4: x.wav: audio is all zeros", "audio_silent", key="k"))
    assert log.summary() == {"audio_silent": 1, "not_json": 1}
    again = SkipLog(tmp_path / "skipped.jsonl")  # a resumed run reads it back
    assert again.summary() == log.summary() and not again.add(error)
    assert [json.loads(line)["source"] for line in (tmp_path / "skipped.jsonl").read_text().splitlines()] == [
        "m.jsonl:3", "m.jsonl:4"]
    assert set(REASONS) >= {r["reason"] for r in again.rows}


def test_osum_data_check_lists_every_bad_item_with_its_reason(folder, capsys):
    from osum_core.cli.main import main

    soundfile.write(folder / "silent.wav", np.zeros(6000, dtype=np.float32), 16000)
    path = manifest(folder, [GOOD, {**GOOD, "txt": "again"}, {**GOOD, "key": "t", "task": "<NOPE>"}, b"{oops\n",
                             {"key": "s", "wav": "silent.wav", "txt": "one"}, {**GOOD, "key": "fine"}])
    assert main(["data", "check", str(path), "--tasks", "asr,ved", "--json", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 2 and report["reasons"] == {
        "audio_silent": 1, "duplicate_key": 1, "not_json": 1, "unknown_task": 1}
    assert any(e.startswith(f"{path}:5: ") and "silent.wav: audio is all zeros" in e for e in report["error_list"])
