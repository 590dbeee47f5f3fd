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


def test_a_corpus_is_reused_only_when_made_by_the_same_format_and_recipe_versions(tmp_path, registry):
    """A corpus from another version of a recipe (or of the corpus layout, or from before it was recorded) is
    synthesised again rather than trained on: its labels or audio may differ from what the code makes now."""
    import dataclasses

    from osum_core.demo.corpus import CORPUS_FORMAT, corpus_is_complete
    from osum_core.demo.prepare import synthesize_demo

    tasks = [registry.tasks["ved"]]
    demo = {**{k: v for k, v in dataclasses.asdict(TINY_SPEC).items() if k not in ("tags", "seed")},
            "train_per_task": 2, "eval_per_task": 1, "workers": 1, "options": {}}
    logged: list[str] = []
    synthesize_demo(tmp_path, tasks, registry.recipes, demo, 3, logged.append)
    assert any("synthesising" in line for line in logged)
    made = json.loads((tmp_path / "ved" / "corpus.json").read_text())
    assert made["recipes"] == {"<TRANSCRIBE> <CAPTION>": 1} and made["format"] == CORPUS_FORMAT

    def synthesised_again(recipes) -> bool:
        logged.clear()
        synthesize_demo(tmp_path, tasks, recipes, demo, 3, logged.append)
        return any("synthesising" in line for line in logged)

    assert not synthesised_again(registry.recipes)  # the same: reused
    bumped = {**registry.recipes, "<TRANSCRIBE> <CAPTION>": dataclasses.replace(
        registry.recipes["<TRANSCRIBE> <CAPTION>"], version=2)}
    assert synthesised_again(bumped)
    assert not synthesised_again(bumped)
    corpus_json = tmp_path / "ved" / "corpus.json"
    before_stamps = {k: v for k, v in json.loads(corpus_json.read_text()).items() if k in ("spec", "counts")}
    corpus_json.write_text(json.dumps(before_stamps))  # as written before the format was recorded
    assert corpus_is_complete(tmp_path / "ved")  # finished, but ...
    assert synthesised_again(bumped)  # ... from before the stamp
    assert json.loads(corpus_json.read_text())["format"] == CORPUS_FORMAT
    other = dataclasses.replace(TINY_SPEC, tags=("<TRANSCRIBE> <CAPTION>",), train_per_task=3, eval_per_task=1)
    assert not corpus_is_complete(tmp_path / "ved", other)  # another spec, without the recipes too
