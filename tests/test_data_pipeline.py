import json

import numpy as np
import pytest
import soundfile
import torch

from osum_core.data.audio import AudioError, load_audio
from osum_core.data.batching import duration_batches
from osum_core.data.dataset import ExampleError, prepare_examples
from osum_core.data.manifest import ManifestError, read_manifest
from osum_core.plugins import load_tasks


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_manifest_resolves_wav_relative_to_its_folder(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [{"key": "a", "wav": "wav/a.wav", "txt": "one"}])
    (example,) = read_manifest(manifest)
    assert example["wav"] == str(tmp_path / "wav" / "a.wav")
    assert example["_source"] == f"{manifest}:1"


def test_manifest_errors_name_file_and_line(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [{"key": "a", "wav": "a.wav", "txt": "x"}, "{not json"])
    with pytest.raises(ManifestError, match=rf"{manifest}:2: not valid JSON"):
        read_manifest(manifest)
    manifest = write_lines(tmp_path / "n.jsonl", [{"key": "a", "txt": "x"}])
    with pytest.raises(ManifestError, match=rf"{manifest}:1: missing field\(s\) wav"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "absent.jsonl")


class WordTokenizer:
    eos_token_id = 1

    def encode(self, text, add_special_tokens=False):
        return [len(word) + 2 for word in text.split()]


def test_missing_audio_and_bad_labels_name_the_manifest_line(tmp_path):
    tasks = list(load_tasks().tasks.values())
    soundfile.write(tmp_path / "ok.wav", np.zeros(1600, dtype=np.float32), 16000)
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            {"key": "a", "wav": "ok.wav", "txt": "one"},
            {"key": "b", "wav": "gone.wav", "txt": "two"},
        ],
    )
    with pytest.raises(AudioError, match=rf"{manifest}:2: audio file .*gone.wav is missing"):
        prepare_examples(read_manifest(manifest), tasks, WordTokenizer())
    manifest = write_lines(
        tmp_path / "v.jsonl", [{"key": "c", "wav": "ok.wav", "txt": "one<yodel>", "task": "<TRANSCRIBE> <CAPTION>"}]
    )
    with pytest.raises(ExampleError, match=rf"{manifest}:1: task ved: label 'yodel'"):
        prepare_examples(read_manifest(manifest), tasks, WordTokenizer())


def test_examples_go_to_the_task_their_tag_names_and_others_are_counted(tmp_path):
    soundfile.write(tmp_path / "ok.wav", np.zeros(3200, dtype=np.float32), 16000)
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            {"key": "a", "wav": "ok.wav", "txt": "one two"},
            {"key": "b", "wav": "ok.wav", "txt": "one<cough>", "task": "<TRANSCRIBE><CAPTION>"},
            {"key": "c", "wav": "ok.wav", "txt": "one<happy>", "task": "<TRANSCRIBE> <EMOTION>"},
        ],
    )
    registry = load_tasks()
    examples, unselected = prepare_examples(read_manifest(manifest), registry.select(["asr", "ved"]), WordTokenizer())
    assert [(e.key, e.task, e.target.text) for e in examples] == [("a", "asr", "one two"), ("b", "ved", "one<cough>")]
    assert unselected == 1
    assert examples[0].frames == 20  # 0.2 s at 10 ms per frame


def test_audio_is_mixed_to_mono_and_resampled(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5
    soundfile.write(tmp_path / "s.flac", stereo, 44100)
    wave = load_audio(tmp_path / "s.flac")
    assert wave.shape == (16000,)
    assert wave.dtype == torch.float32
    assert 0.4 < float(wave.abs().max()) < 0.6
    with pytest.raises(AudioError, match="nothing.wav: audio file not found"):
        load_audio(tmp_path / "nothing.wav")


def test_duration_batches_respect_both_budgets_and_cover_every_example():
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 1500, size=300).tolist()
    tokens = rng.integers(10, 200, size=300).tolist()
    batches = duration_batches(frames, tokens, max_frames=4000, max_tokens=600, sort_window=100, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for batch in batches:
        assert max(frames[i] for i in batch) * len(batch) <= 4000
        assert max(tokens[i] for i in batch) * len(batch) <= 600
    assert len({len(b) for b in batches}) > 1  # short utterances share batches: sizes vary
    assert batches == duration_batches(frames, tokens, 4000, 600, sort_window=100, seed=1)


def test_an_oversized_example_gets_a_batch_of_its_own():
    assert duration_batches([10, 5000, 10], [1, 1, 1], max_frames=100, max_tokens=100) == [[0, 2], [1]]


def test_dataset_items_carry_weights_and_the_chosen_ctc_target(tiny_corpus):
    from osum_core.data.dataset import PlanItem, SpeechDataset, TaskPrompts

    tasks = {t.name: t.with_weights(label_loss_weight=2.0) if t.name == "ved" else t
             for t in load_tasks().select(["asr", "ved"])}
    examples, _ = prepare_examples(read_manifest(tiny_corpus / "train.jsonl"), list(tasks.values()), WordTokenizer())
    ved_index = next(i for i, e in enumerate(examples) if e.task == "ved")
    example = examples[ved_index]
    prompts = TaskPrompts.of_tasks(tasks, WordTokenizer(), "en")
    common = dict(n_mels=80, train=True, seed=1, spec_augment=None)
    item = SpeechDataset(tasks, prompts, 1, ctc_target="transcript", **common)[PlanItem(example, 0, "0")]
    n = len(example.transcript_ids)
    assert item["target_ids"].tolist() == [*example.transcript_ids, *example.suffix_ids, 1]
    assert item["target_weights"].tolist() == [1.0] * n + [2.0] * (len(example.suffix_ids) + 1)
    assert item["ctc_ids"].tolist() == list(example.transcript_ids)
    assert item["features"].shape == (example.frames, 80)
    with_tags = SpeechDataset(tasks, prompts, 1, ctc_target="target", **common)[PlanItem(example, 0, "0")]
    assert with_tags["ctc_ids"].tolist() == [*example.transcript_ids, *example.suffix_ids]
    with pytest.raises(ValueError, match="loss.ctc_target"):
        SpeechDataset(tasks, prompts, 1, ctc_target="labels", **common)


def test_the_ctc_head_learns_sttcs_question_but_never_its_reply(tiny_corpus):
    """The reply to a spoken question is not in its audio: with ctc_target=target the CTC head learns the label
    tags that describe the sound (VED's, above) but STTC's question alone; the LLM still learns the reply."""
    from osum_core.data.dataset import PlanItem, SpeechDataset, TaskPrompts

    tasks = {t.name: t for t in load_tasks().select(["sttc"])}
    wav = read_manifest(tiny_corpus / "train.jsonl")[0]["wav"]
    line = {"key": "q1", "wav": wav, "task": tasks["sttc"].tag, "txt": "three plus four<开始回答>seven"}
    (example,), _ = prepare_examples([line], list(tasks.values()), WordTokenizer())
    assert example.suffix_ids  # "<开始回答>seven"
    prompts = TaskPrompts.of_tasks(tasks, WordTokenizer(), "en")
    item = SpeechDataset(tasks, prompts, 1, ctc_target="target", n_mels=80, train=True, seed=1,
                         spec_augment=None)[PlanItem(example, 0, "0")]
    assert item["ctc_ids"].tolist() == list(example.transcript_ids)
    assert item["target_ids"].tolist() == [*example.transcript_ids, *example.suffix_ids, 1]


def test_buckets_group_by_duration_each_with_its_own_batch_size():
    from osum_core.data.batching import bucketed_batches, check_buckets

    frames = [150, 480, 520, 1400, 2900, 100, 300, 1200] * 5  # 1.5 s ... 29 s
    buckets = [{"max_seconds": 5, "batch_size": 3}, {"max_seconds": 15, "batch_size": 2}, {"max_seconds": 30, "batch_size": 1}]
    budget = {"max_frames": 10**6, "max_tokens": 10**6, "buckets": buckets}
    batches = bucketed_batches(frames, [10] * len(frames), budget, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(frames)))
    for batch in batches:
        longest = max(frames[i] for i in batch)
        size = 3 if longest <= 500 else 2 if longest <= 1500 else 1
        assert len(batch) <= size and all((frames[i] <= 500) == (longest <= 500) for i in batch)
    assert bucketed_batches(frames, [10] * len(frames), budget, seed=3) == batches
    with pytest.raises(ValueError, match=r"data.buckets\[1\]: max_seconds must rise"):
        check_buckets([{"max_seconds": 5}, {"max_seconds": 5}])
    with pytest.raises(ValueError, match=r"data.buckets\[0\]: unknown key\(s\) size"):
        check_buckets([{"max_seconds": 5, "size": 2}])


def test_buckets_are_a_config_key(tiny_corpus):
    from osum_core.config import fit_config

    cfg = fit_config(overrides=["data.buckets=[{max_seconds: 2, batch_size: 2}, {max_seconds: 30, batch_size: 4}]"])
    assert cfg["data"]["buckets"][1] == {"max_seconds": 30, "batch_size": 4}


def test_only_rank_zero_writes_the_key_log_with_every_ranks_keys(tmp_path, monkeypatch):
    # Appends from several nodes to one shared file are not atomic: rank 0 gathers and writes, in rank order.
    from types import SimpleNamespace

    import torch.distributed as dist

    from osum_core.train.key_log import KeyLog

    path = tmp_path / "train_keys.jsonl"
    keys = {0: ["a", "b"], 1: ["c"]}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), [keys[0], keys[1]]))

    def one_step(rank: int) -> None:
        trainer = SimpleNamespace(global_step=0, global_rank=rank, is_global_zero=rank == 0,
                                  strategy=SimpleNamespace(barrier=lambda name: None))
        log = KeyLog(path)
        log.on_train_start(trainer, None)
        log.on_train_batch_start(trainer, None, {"keys": keys[rank]}, 0)
        trainer.global_step = 1  # the optimiser stepped
        log.on_train_batch_end(trainer, None, None, {"keys": keys[rank]}, 0)

    one_step(1)
    assert not path.exists()
    one_step(0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "rank": 0, "keys": ["a", "b"]}, {"step": 1, "rank": 1, "keys": ["c"]}]
