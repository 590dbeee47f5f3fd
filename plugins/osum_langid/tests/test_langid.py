"""The langid plugin as osum sees it once installed: discovery, targets, demo data, training beside asr."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from osum_core.cli.main import main
from osum_core.config import load_config
from osum_core.demo.corpus import synthesize_corpus
from osum_core.demo.speech_synth import list_variants, synthesize
from osum_core.plugins import CorpusSpec, Utterance, Voice, load_tasks
from osum_core.task import Target

from osum_langid.langid import LABELS, TASK, VOICES, draw

DEMO = load_config()["data"]["demo"]  # osum's configured demo-corpus settings
HELDOUT = tuple(DEMO["heldout_voices"])
SPEC = CorpusSpec.from_config({**DEMO, "train_per_task": 10, "eval_per_task": 3}, 1, (TASK.tag,))


@pytest.fixture(scope="module")
def registry():
    return load_tasks()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, registry) -> dict[str, list[dict]]:
    """A tiny langid demo corpus, as manifest lines by split."""
    out = tmp_path_factory.mktemp("langid_corpus")
    synthesize_corpus(out, SPEC, registry.recipes, workers=1)
    return {
        split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        for split in ("train", "dev", "test")
    }


def test_osum_finds_the_installed_task_and_its_recipe(registry):
    assert registry.tasks["langid"].tag == "<TRANSCRIBE> <LANGID>"
    assert registry.tasks["langid"].labels == ("en", "de", "es", "fr", "it")
    assert registry.packages["langid"] == "osum-langid"
    assert TASK.tag in registry.recipes
    assert [p for p in registry.problems if p.package == "osum-langid" or p.plugin == "langid"] == []


@pytest.mark.parametrize("language", LABELS)
def test_every_language_has_a_voice_that_takes_the_heldout_speakers(language):
    assert set(HELDOUT) <= set(list_variants())
    for variant in HELDOUT:
        speech = synthesize("3 4 0 7", Voice(VOICES[language], variant, 160, 50))
        assert [w.word for w in speech.words] == ["3", "4", "0", "7"]
        assert np.abs(speech.audio).max() > 0.1


def test_target_comes_from_the_txt_tag_or_the_language_field():
    assert TASK.build_target({"txt": "3 4 0 7<de>"}) == Target("3 4 0 7", "<de>")
    assert TASK.build_target({"txt": "3 4 0 7", "language": "FR"}) == Target("3 4 0 7", "<fr>")
    assert TASK.build_target({"txt": "1 2", "extra": {"language": "it"}}).text == "1 2<it>"


@pytest.mark.parametrize("example", [{"txt": "1 2<xx>"}, {"txt": "1 2", "language": "pt"}, {"txt": "1 2"}])
def test_a_bad_or_missing_label_names_the_field(example):
    with pytest.raises(ValueError, match="language"):
        TASK.build_target(example)


@pytest.mark.parametrize("text", ["", "<", "3 4<de><fr>", "<<>>", "3 4 <", "<es"])
def test_parse_output_never_raises(text):
    prediction = TASK.parse_output(text)
    assert prediction.text == text
    assert prediction.label is None or prediction.label in LABELS


def test_parse_output_reads_the_first_label():
    assert TASK.parse_output("3 4 0 7<es>").label == "es"
    assert TASK.parse_output("3 4 0 7<es>").transcript == "3 4 0 7"
    assert TASK.parse_output("3 4<de><fr>").label == "de"
    assert TASK.parse_output("3 4").label is None


def test_draw_writes_numerals_and_picks_every_language():
    planned = Utterance("k", "test", TASK.tag, ("three", "oh", "seven", "zero"), Voice("en-us", "f4", 160, 50), 0)
    drawn = {}
    for seed in range(50):
        utt = draw(planned, random.Random(seed), SPEC)
        drawn[utt.labels["language"]] = utt
    assert set(drawn) == set(LABELS)
    for language, utt in drawn.items():
        assert utt.words == ("3", "0", "7", "0")
        assert utt.voice.name == VOICES[language] and utt.voice.variant == "f4"


def test_same_digits_sound_different_in_each_language():
    audio = {lang: synthesize("3 0 7 0", Voice(VOICES[lang], "m6", 160, 50)).audio for lang in LABELS}
    for a in LABELS:
        for b in LABELS:
            if a < b:
                same = len(audio[a]) == len(audio[b]) and np.allclose(audio[a], audio[b], atol=1e-3)
                assert not same, f"{a} and {b} sound the same"


def test_corpus_lines_are_numerals_then_the_language(corpus):
    lines = [line for split in corpus.values() for line in split]
    assert [len(corpus[s]) for s in ("train", "dev", "test")] == [10, 3, 3]
    for line in lines:
        language = line["language"]
        numerals = [word for word, _start, _end in line["extra"]["words"]]
        assert re.fullmatch(r"\d( \d)*", " ".join(numerals))
        assert line["txt"] == " ".join(numerals) + f"<{language}>"
        assert line["task"] == TASK.tag and line["lang"] == language
        assert line["speaker"].split("+")[0] == VOICES[language]
        assert TASK.build_target(line).text == line["txt"]
    assert len({line["language"] for line in lines}) >= 3


def test_dev_and_test_use_heldout_speakers(corpus):
    for split, lines in corpus.items():
        variants = {line["speaker"].split("+")[1] for line in lines}
        assert variants <= set(HELDOUT if split != "train" else SPEC.train_voices), split


@pytest.mark.slow
def test_fit_trains_langid_beside_asr(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "synth", str(data), "--tasks", "asr,langid", "--workers", "1",
                 "train_per_task=8", "eval_per_task=2"]) == 0  # fmt: skip

    def manifests(split: str) -> str:
        return f"[{data / 'asr' / split}.jsonl,{data / 'langid' / split}.jsonl]"

    assert main([
        "fit", "--tasks", "asr,langid", "--out", str(run),
        f"data.train={manifests('train')}", f"data.val={manifests('dev')}", f"data.test={manifests('test')}",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "trainer.max_time=null", "model.encoder.config.encoder_layers=1", "model.llm.config.num_hidden_layers=1",
        "loss.ce_start_step=0", "data.num_workers=0", "eval.generation.max_new_tokens=8",
    ]) == 0  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"asr", "langid", "skipped"}
    assert 0.0 <= metrics["langid"]["accuracy"] <= 1.0
    test_lines = (data / "langid" / "test.jsonl").read_text().splitlines()
    assert metrics["langid"]["count"] == len(test_lines) == 2
    predictions = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert {p["task"] for p in predictions} == {"asr", "langid"}


def test_its_common_voice_recipe_labels_the_locales_it_knows(tmp_path, registry):
    import soundfile
    from osum_core.data.corpus_preparation import prepare_corpus

    release = tmp_path / "cv-corpus-17.0"
    for locale, sentence in (("de", "Guten Morgen"), ("fr", "Bonjour à tous"), ("cy", "Bore da")):
        (release / locale / "clips").mkdir(parents=True)
        samples = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
        soundfile.write(release / locale / "clips" / f"common_voice_{locale}_1.mp3", samples, 16000)
        (release / locale / "train.tsv").write_text(f"client_id\tpath\tsentence\nc\tcommon_voice_{locale}_1.mp3\t{sentence}\n")
    assert registry.corpus_packages["commonvoice-langid"] == "osum-langid"
    report = prepare_corpus(registry.corpora["commonvoice-langid"], release, tmp_path / "out", registry.tasks,
                            workers=0, log=lambda message: None)
    lines = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [(x["key"], x["txt"]) for x in lines] == [("common_voice_de_1_langid", "guten morgen<de>"),
                                                     ("common_voice_fr_1_langid", "bonjour à tous<fr>")]
    part = report["subsets"]["train"]
    assert part["labels"] == {"langid": {"<de>": 1, "<fr>": 1}}
    assert part["left_out"]["unmapped_labels"] == {"cy": 1}
