import json

import soundfile
from conftest import TINY_SPEC, corpus_spec

from osum_core.data.manifest import read_manifest
from osum_core.demo.corpus import DIGITS, plan_corpus, string_split, synthesize_corpus
from osum_tasks.ved import LABELS as EVENT_LABELS


def test_splits_hold_out_voices_and_sentences(registry):
    spec = corpus_spec(("<TRANSCRIBE>", "<TRANSCRIBE> <CAPTION>"), 0, train_per_task=200, eval_per_task=40)
    utterances = plan_corpus(spec, registry.recipes)
    by_split = {s: [u for u in utterances if u.split == s] for s in ("train", "dev", "test")}
    train_voices = {u.voice.variant for u in by_split["train"]}
    train_strings = {u.words for u in by_split["train"]}
    for split in ("dev", "test"):
        assert not train_voices & {u.voice.variant for u in by_split[split]}
        assert not train_strings & {u.words for u in by_split[split]}
        assert all(string_split(u.words) == split for u in by_split[split])
    assert not {u.words for u in by_split["dev"]} & {u.words for u in by_split["test"]}
    assert {u.labels["event"] for u in utterances if "event" in u.labels} == set(EVENT_LABELS)


def test_corpus_is_osum_jsonl_and_deterministic(tmp_path, tiny_corpus, registry):
    again = tmp_path / "again"
    synthesize_corpus(again, TINY_SPEC, registry.recipes, workers=2)
    for split in ("train", "dev", "test"):
        assert (again / f"{split}.jsonl").read_text() == (tiny_corpus / f"{split}.jsonl").read_text()
    first = json.loads((tiny_corpus / "train.jsonl").read_text().splitlines()[0])
    assert (again / first["wav"]).read_bytes() == (tiny_corpus / first["wav"]).read_bytes()

    examples = read_manifest(tiny_corpus / "train.jsonl")
    assert len(examples) == 48
    for example in examples:
        assert {"key", "wav", "txt", "task", "lang", "speaker", "gender", "duration", "extra"} <= set(example)
        info = soundfile.info(example["wav"])
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.duration - example["duration"]) < 0.01
        words = example["txt"].split("<")[0].split()
        assert all(w in DIGITS for w in words)
        assert [w[0] for w in example["extra"]["words"]] == words
        if example["task"] == "<TRANSCRIBE> <CAPTION>":
            assert example["txt"].endswith(f"<{example['event']}>")
        else:
            assert "<" not in example["txt"]
