"""`osum data prepare`: tiny but faithful copies of each release's layout (its files, formats and known
quirks), never the real data; every field of the output, the report, resume, shards, `osum data check` on
the result, and `osum fit` on a prepared corpus and on a mixture of two."""

from __future__ import annotations

import csv
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import TINY

from osum_core.cli.main import main
from osum_core.data import corpus_preparation
from osum_core.data.corpus_preparation import PARTS_DIR, PrepareError, prepare_corpus
from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut, hookimpl, load_tasks


def noise(path: Path, seconds: float, rate: int = 16000, seed: int = 0, **kwargs) -> Path:
    """Audio that is never silent (all-zero audio is a bad item), in the format the suffix names."""
    samples = (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, **kwargs)
    return path


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------------------------
# LibriSpeech: LibriSpeech/<subset>/<speaker>/<chapter>/{<speaker>-<chapter>.trans.txt, <ID>.flac}


def librispeech_release(root: Path) -> Path:
    corpus = root / "LibriSpeech"
    chapters = {
        "dev-clean": {("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"],
                      ("174", "50561"): ["FORGOTTEN TOO THE NAME OF GILLIAN THE LOVELY CAPTIVE"]},
        "test-clean": {("1089", "134686"): ["HE HOPED THERE WOULD BE STEW FOR DINNER", "STUFF IT INTO YOU"]},
    }
    for subset, by_chapter in chapters.items():
        for (speaker, chapter), texts in by_chapter.items():
            folder = corpus / subset / speaker / chapter
            folder.mkdir(parents=True)
            rows = []
            for index, text in enumerate(texts):
                utterance = f"{speaker}-{chapter}-{index:04d}"
                noise(folder / f"{utterance}.flac", 0.6 + 0.1 * index, seed=index)
                rows.append(f"{utterance} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(rows) + "\n")
    # The quirks a release copy has: a transcript line whose audio is missing, a FLAC without a transcript
    # line, a FLAC cut short (a broken download), a chapter without its transcript file.
    chapter = corpus / "dev-clean" / "84" / "121123"
    with (chapter / "84-121123.trans.txt").open("a") as transcript:
        transcript.write("84-121123-0009 A LINE WHOSE AUDIO IS GONE\n")
    noise(chapter / "84-121123-0010.flac", 0.5)
    cut_short(corpus / "dev-clean" / "174" / "50561" / "174-50561-0000.flac")
    noise(corpus / "test-clean" / "2300" / "131720" / "2300-131720-0000.flac", 0.5)
    (corpus / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET |MINUTES| NAME\n84 | F | dev-clean | 8.02 | Christie\n")
    return corpus


def test_librispeech_every_field_the_report_and_what_was_left_out(tmp_path, registry):
    release = librispeech_release(tmp_path / "src")
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["librispeech"], tmp_path / "src", out, registry.tasks, workers=0, log=lambda m: None)

    assert sorted(p.name for p in out.iterdir()) == [PARTS_DIR, "dev-clean.jsonl", "left_out", "prepare_report.json",
                                                     "test-clean.jsonl"]
    # Nothing staged is left; each audio file's check is kept (for other subsets and re-runs).
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == ["audio.jsonl", "dev-clean.json", "test-clean.json"]
    dev = lines(out / "dev-clean.jsonl")
    assert [x["key"] for x in dev] == ["84-121123-0000_asr", "84-121123-0001_asr"]
    first = dev[0]
    assert first == {"key": "84-121123-0000_asr", "wav": str(release / "dev-clean/84/121123/84-121123-0000.flac"),
                     "txt": "go do you hear", "task": "<TRANSCRIBE>", "speaker": "84", "lang": "en", "duration": 0.6}
    assert dev[1]["duration"] == 0.7 and dev[1]["txt"] == "but in less than five minutes the staircase groaned"
    assert [x["txt"] for x in lines(out / "test-clean.jsonl")] == ["he hoped there would be stew for dinner", "stuff it into you"]

    assert report == json.loads((out / "prepare_report.json").read_text())
    assert (report["recipe"], report["tasks"], report["items"]) == ("librispeech", ["asr"], 4)
    part = report["subsets"]["dev-clean"]
    assert part["output"] == "dev-clean.jsonl" and part["items"] == 2
    assert part["tasks"] == {"asr": {"items": 2, "hours": round(1.3 / 3600, 4)}}
    left = {(Path(e["item"].split(":")[0]).name, e["reason"]) for e in part["left_out"]["list"]}
    assert left == {("84-121123.trans.txt", "no audio"), ("84-121123-0010.flac", "no transcript"),
                    ("174-50561-0000_asr", "unreadable audio")}
    assert part["left_out"]["by_reason"] == {"no audio": 1, "no transcript": 1, "unreadable audio": 1}
    assert lines(out / part["left_out"]["file"]) == part["left_out"]["list"]  # every item, one line each
    unreadable = next(e for e in part["left_out"]["list"] if e["reason"] == "unreadable audio")
    assert "174-50561-0000.flac" in unreadable["detail"]
    assert report["subsets"]["test-clean"]["left_out"]["list"] == [
        {"item": str(release / "test-clean/2300/131720/2300-131720-0000.flac"), "reason": "no transcript",
         "detail": "2300-131720.trans.txt is missing"}]
    # The prepared manifests are data osum reads as training would: no errors.
    assert main(["data", "check", str(out / "dev-clean.jsonl"), "--tasks", "asr", "--quiet"]) == 0


def test_a_wrong_source_folder_says_what_was_expected_and_writes_nothing(tmp_path, registry, capsys):
    (tmp_path / "src" / "somewhere").mkdir(parents=True)
    out = tmp_path / "out"
    assert main(["data", "prepare", "librispeech", str(tmp_path / "src"), str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "expected LibriSpeech/ as unpacked" in error and "train-clean-100" in error and "Traceback" not in error
    assert not out.exists()
    assert main(["data", "prepare", "librispeech", str(tmp_path / "missing"), str(out), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["data", "prepare", "nosuch", str(tmp_path / "src"), str(out)]) == 2
    assert "no recipe 'nosuch'" in capsys.readouterr().err


def test_splits_are_chosen_and_an_unknown_or_absent_one_is_refused(tmp_path, registry):
    librispeech_release(tmp_path / "src")
    recipe = registry.corpora["librispeech"]
    out = tmp_path / "out"
    prepare_corpus(recipe, tmp_path / "src", out, registry.tasks, splits=["test-clean"], workers=0, log=lambda m: None)
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["test-clean.jsonl"]
    with pytest.raises(PrepareError, match="no subset 'test-cleen'.*test-clean"):
        prepare_corpus(recipe, tmp_path / "src", out, registry.tasks, splits=["test-cleen"], log=lambda m: None)
    with pytest.raises(PrepareError, match="'train-clean-100' is not under .*found: dev-clean, test-clean"):
        prepare_corpus(recipe, tmp_path / "src", out, registry.tasks, splits=["train-clean-100"], log=lambda m: None)


def test_a_rerun_keeps_finished_subsets_and_redoes_one_cut_short(tmp_path, registry, monkeypatch):
    librispeech_release(tmp_path / "src")
    recipe = registry.corpora["librispeech"]
    out = tmp_path / "out"
    said: list[str] = []
    prepare_corpus(recipe, tmp_path / "src", out, registry.tasks, workers=0, log=said.append)
    before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("*.jsonl")}
    # A crash after the test-clean manifest was renamed into place but before its report part was written.
    (out / PARTS_DIR / "test-clean.json").unlink()
    (out / "test-clean.jsonl").write_text('{"half": ')
    said.clear()
    decoded = []
    real_check = corpus_preparation.check_audio
    monkeypatch.setattr(corpus_preparation, "check_audio", lambda job: decoded.append(job) or real_check(job))
    report = prepare_corpus(recipe, tmp_path / "src", out, registry.tasks, workers=0, log=said.append)
    assert decoded == []  # every file's check was recorded the first time
    assert said[0] == "dev-clean: finished before, kept (2 items)" and said[1].startswith("test-clean: 2 items")
    assert (out / "dev-clean.jsonl").stat().st_mtime_ns == before["dev-clean.jsonl"][0]
    assert (out / "test-clean.jsonl").read_text() == before["test-clean.jsonl"][1]
    assert report["items"] == 4 and set(report["subsets"]) == {"dev-clean", "test-clean"}
    assert not list(out.rglob("*.partial"))


def test_workers_give_the_same_output_as_one_process(tmp_path, registry):
    librispeech_release(tmp_path / "src")
    recipe = registry.corpora["librispeech"]
    prepare_corpus(recipe, tmp_path / "src", tmp_path / "one", registry.tasks, workers=0, log=lambda m: None)
    prepare_corpus(recipe, tmp_path / "src", tmp_path / "two", registry.tasks, workers=2, log=lambda m: None)
    for name in ("dev-clean.jsonl", "test-clean.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    first, second = (json.loads((tmp_path / d / "prepare_report.json").read_text()) for d in ("one", "two"))
    assert first["subsets"] == second["subsets"]


def test_shards_instead_of_manifests(tmp_path, registry, capsys):
    librispeech_release(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["data", "prepare", "librispeech", str(tmp_path / "src"), str(out), "--shard", "--per-shard", "1",
                 "--workers", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "dev-clean -> dev-clean/shards.list: asr 2" in printed and "left out: " in printed
    assert not list(out.glob("*.jsonl")) and [p.name for p in (out / PARTS_DIR).glob("*.jsonl")] == ["audio.jsonl"]
    assert (out / "dev-clean" / "shards.list").read_text().split() == ["shard-000000.tar", "shard-000001.tar"]
    assert main(["data", "check", str(out / "dev-clean" / "shards.list"), "--tasks", "asr", "--quiet"]) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["subsets"]["dev-clean"]["output"] == "dev-clean/shards.list"


# ----------------------------------------------------------------------------------------------------------
# AISHELL-1: data_aishell/{wav/<split>/<speaker>/<ID>.wav, transcript/aishell_transcript_v0.8.txt},
# resource_aishell/speaker.info


def aishell_release(root: Path, unpacked: bool = True) -> Path:
    data = root / "data_aishell"
    texts = {
        ("train", "S0002"): ["而 对 楼市 成交 抑制 作用 最 大 的 限 购", "也 成为 地方 政府 的 眼中 钉"],
        ("dev", "S0724"): ["北京 市 人民 政府"],
        ("test", "S0764"): ["广州 市 房地产 中介 协会 分析"],
        ("test", "S0901"): ["一 是 房价 快速 上涨"],
    }
    rows = []
    for (split, speaker), sentences in texts.items():
        for index, sentence in enumerate(sentences):
            utterance = f"BAC009{speaker}W{index + 122:04d}"
            if unpacked:
                noise(data / "wav" / split / speaker / f"{utterance}.wav", 0.8, seed=index, subtype="PCM_16")
            rows.append(f"{utterance} {sentence}")
    rows.append("BAC009S0002W0999 这 句 的 音频 丢失 了")  # a transcript line whose audio is missing
    (data / "transcript").mkdir(parents=True)
    (data / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if unpacked:
        noise(data / "wav" / "train" / "S0002" / "BAC009S0002W0500.wav", 0.5)  # audio without a transcript line
        cut_short(data / "wav" / "test" / "S0764" / "BAC009S0764W0122.wav")
        (data / "wav" / "S0002.tar.gz").write_bytes(b"\x1f\x8b")  # unpacking leaves the archive beside its folder
    else:
        (data / "wav").mkdir(parents=True)
        (data / "wav" / "S0002.tar.gz").write_bytes(b"\x1f\x8b")
    resource = root / "resource_aishell"
    resource.mkdir()
    # S0901 is missing from speaker.info: its utterances get no SGC line.
    (resource / "speaker.info").write_text("0002 F\n0724 M\n0764 M\n", encoding="utf-8")
    return root


def test_aishell_asr_and_gender_lines_without_spaces_between_characters(tmp_path, registry):
    root = aishell_release(tmp_path / "aishell")
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["aishell"], root, out, registry.tasks, workers=0, log=lambda m: None)
    train = lines(out / "train.jsonl")
    wav = str(root / "data_aishell/wav/train/S0002/BAC009S0002W0122.wav")
    assert train[0] == {"key": "BAC009S0002W0122_asr", "wav": wav, "txt": "而对楼市成交抑制作用最大的限购",
                        "task": "<TRANSCRIBE>", "speaker": "S0002", "lang": "zh", "duration": 0.8}
    assert train[1] == {"key": "BAC009S0002W0122_sgc", "wav": wav, "txt": "而对楼市成交抑制作用最大的限购<female>",
                        "task": "<TRANSCRIBE> <GENDER>", "gender": "female", "extra": {"raw_label": "F"},
                        "speaker": "S0002", "lang": "zh", "duration": 0.8}
    assert len(train) == 4
    part = report["subsets"]["train"]
    assert part["tasks"]["asr"]["items"] == 2 and part["tasks"]["sgc"]["items"] == 2
    assert part["labels"] == {"sgc": {"<female>": 2}}
    assert part["mapping"] == {"sgc": {"F": {"<female>": 2}}}
    assert part["left_out"]["by_reason"] == {"no transcript": 1, "no audio": 1}
    test = report["subsets"]["test"]
    assert test["tasks"] == {"asr": {"items": 1, "hours": round(0.8 / 3600, 4)}}  # one unreadable, one ASR only
    assert test["left_out"]["by_reason"] == {"unreadable audio": 2, "no speaker gender": 1}
    unreadable = [e for e in test["left_out"]["list"] if e["reason"] == "unreadable audio"]
    assert [e["item"] for e in unreadable] == ["BAC009S0764W0122_asr", "BAC009S0764W0122_sgc"]
    assert "truncated" in unreadable[0]["detail"]
    assert main(["data", "check", str(out / "train.jsonl"), "--tasks", "asr,sgc", "--quiet"]) == 0


def test_aishell_with_its_speaker_archives_still_packed_says_how_to_unpack_them(tmp_path, registry):
    root = aishell_release(tmp_path / "aishell", unpacked=False)
    with pytest.raises(PrepareError, match=r"per-speaker archives, not yet unpacked.*tar -xzf"):
        prepare_corpus(registry.corpora["aishell"], root, tmp_path / "out", registry.tasks, log=lambda m: None)


# ----------------------------------------------------------------------------------------------------------
# ESC-50: ESC-50-master/{audio/<fold>-<src>-<take>-<target>.wav, meta/esc50.csv}


ESC50_ROWS = [  # filename, fold, target, category
    ("1-104089-A-22.wav", 1, 22, "clapping"),
    ("1-115545-A-48.wav", 1, 48, "fireworks"),
    ("1-17367-A-10.wav", 1, 10, "rain"),
    ("1-30226-A-26.wav", 1, 26, "laughing"),
    ("1-17808-A-24.wav", 1, 24, "coughing"),
    ("2-102414-A-21.wav", 2, 21, "sneezing"),
    ("2-107351-A-20.wav", 2, 20, "crying_baby"),
    ("2-110614-A-0.wav", 2, 0, "dog"),
]


def esc50_release(root: Path) -> Path:
    corpus = root / "ESC-50-master"
    (corpus / "meta").mkdir(parents=True)
    with (corpus / "meta" / "esc50.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for name, fold, target, category in ESC50_ROWS:
            writer.writerow([name, fold, target, category, "False", name.split("-")[1], name.split("-")[2]])
    for name, *_ in ESC50_ROWS[1:]:  # the first row's audio is missing
        noise(corpus / "audio" / name, 5.0, rate=44100, subtype="PCM_16")
    noise(corpus / "audio" / "2-999999-A-1.wav", 5.0, rate=44100)  # audio without a row
    return corpus


def test_esc50_folds_map_the_vocal_categories_and_the_rest_to_other(tmp_path, registry):
    esc50_release(tmp_path)
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["esc50"], tmp_path, out, registry.tasks, workers=0, log=lambda m: None)
    assert sorted(report["subsets"]) == ["fold1", "fold2", "fold3", "fold4", "fold5"]
    fold1 = lines(out / "fold1.jsonl")
    assert fold1[0] == {"key": "1-115545-A-48_ved", "wav": str(tmp_path / "ESC-50-master/audio/1-115545-A-48.wav"),
                        "txt": "<other>", "task": "<TRANSCRIBE> <CAPTION>",
                        "extra": {"raw_label": "fireworks", "fold": 1}, "duration": 5.0}
    assert [x["txt"] for x in fold1] == ["<other>", "<other>", "<laugh>", "<cough>"]
    assert [x["txt"] for x in lines(out / "fold2.jsonl")] == ["<sneeze>", "<cry>", "<other>"]
    assert lines(out / "fold5.jsonl") == []
    assert report["subsets"]["fold2"]["mapping"] == {
        "ved": {"crying_baby": {"<cry>": 1}, "dog": {"<other>": 1}, "sneezing": {"<sneeze>": 1}}}
    assert report["subsets"]["fold1"]["left_out"]["list"][0]["reason"] == "no audio"
    assert report["subsets"]["fold2"]["left_out"]["list"] == [
        {"item": str(tmp_path / "ESC-50-master/audio/2-999999-A-1.wav"), "reason": "not in meta/esc50.csv"}]
    assert main(["data", "check", str(out / "fold1.jsonl"), "--tasks", "ved", "--quiet"]) == 0


# ----------------------------------------------------------------------------------------------------------
# The contract: a third party's recipe, broken ones, and the command's listing.


def find_one(source: Path) -> list[str]:
    if not (source / "clips").is_dir():
        raise CorpusLayoutError("expected a folder holding clips/")
    return ["all"]


def read_clips(source: Path, split: str):
    for wav in sorted((source / "clips").glob("*.wav")):
        if wav.stem.endswith("bad"):
            yield LeftOut(str(wav), "label not mapped", "grunt")
            continue
        yield {"key": wav.stem, "wav": str(wav), "txt": "one two<laugh>", "task": "<TRANSCRIBE> <CAPTION>",
               "extra": {"raw_label": "giggle"}}


def recipe_plugin(name: str, *recipes: CorpusRecipe) -> types.ModuleType:
    """A plugin module contributing `recipes`, as a third party's package would."""
    module = types.ModuleType(name)

    @hookimpl
    def osum_corpus_recipes():
        return list(recipes)

    module.osum_corpus_recipes = osum_corpus_recipes
    return module


THIRD_PARTY = recipe_plugin("clips_plugin", CorpusRecipe("clips", "a folder of clips", ("ved",), ("all",),
                                                         "a folder holding clips/", find_one, read_clips))
BROKEN = recipe_plugin("broken_plugin", CorpusRecipe("Bad Name", "", (), ("a", "a"), "", find_one, read_clips),
                       CorpusRecipe("esc50", "a second esc50", ("ved",), ("x",), "", find_one, read_clips))


def test_a_third_party_recipe_runs_as_the_built_in_ones_and_broken_ones_are_reported(tmp_path):
    registry = load_tasks(extra_plugins=[THIRD_PARTY, BROKEN])
    assert registry.corpus_packages["clips"] == "clips_plugin"
    problems = [str(p) for p in registry.problems if p.hook == "osum_corpus_recipes"]
    assert len(problems) == 2 and all("broken_plugin" in p for p in problems)
    assert "'Bad Name'" in problems[0] and "lowercase" in problems[0] and "each once" in problems[0]
    assert "exists already (from package 'osum')" in problems[1]
    for name in ("a-laugh", "b-bad"):
        noise(tmp_path / "src" / "clips" / f"{name}.wav", 0.4)
    report = prepare_corpus(registry.corpora["clips"], tmp_path / "src", tmp_path / "out", registry.tasks, workers=0,
                            log=lambda m: None)
    part = report["subsets"]["all"]
    assert part["mapping"] == {"ved": {"giggle": {"<laugh>": 1}}}
    assert part["left_out"]["unmapped_labels"] == {"grunt": 1}


def test_a_recipe_that_raises_or_writes_a_line_no_task_reads_is_named(tmp_path):
    def raising(source: Path, split: str):
        yield LeftOut("x", "y")
        raise KeyError("column 'path'")

    def untagged(source: Path, split: str):
        yield {"key": "k", "wav": str(noise(tmp_path / "src" / "clips" / "k.wav", 0.3)), "txt": "hi", "task": "<EMOTION>"}

    registry = load_tasks()
    (tmp_path / "src" / "clips").mkdir(parents=True)
    for read, message in ((raising, r"recipe r failed reading subset all: KeyError: \"column 'path'\""),
                          (untagged, r"key k: task tag '<EMOTION>' is read by none of the recipe's tasks \(ved\)")):
        recipe = CorpusRecipe("r", "", ("ved",), ("all",), "", find_one, read)
        with pytest.raises(PrepareError, match=message):
            prepare_corpus(recipe, tmp_path / "src", tmp_path / "out", registry.tasks, workers=0, log=lambda m: None)


def test_prepare_list_names_every_installed_recipe(capsys):
    assert main(["data", "prepare", "--list"]) == 0
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert rows["librispeech"] == ["asr", "osum"] and rows["aishell"] == ["asr,sgc", "osum"]
    assert rows["esc50"] == ["ved", "osum"]


# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_trains_on_a_prepared_corpus_and_on_a_mixture_of_two(tmp_path):
    librispeech_release(tmp_path / "libri")
    esc50_release(tmp_path / "esc")
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "librispeech", str(tmp_path / "libri"), str(prepared / "libri"), "--quiet", "--workers", "0"]) == 0
    assert main(["data", "prepare", "esc50", str(tmp_path / "esc"), str(prepared / "esc"), "--quiet", "--workers", "0"]) == 0
    libri = prepared / "libri"
    assert main(["fit", "--tasks", "asr", "--out", str(tmp_path / "one"), f"data.train={libri / 'dev-clean.jsonl'}",
                 f"data.val={libri / 'test-clean.jsonl'}", f"data.test={libri / 'test-clean.jsonl'}", *TINY]) == 0
    mixture = prepared / "mixture.yaml"
    mixture.write_text("librispeech: {path: libri/dev-clean.jsonl, weight: 1}\nesc50: {path: esc/fold1.jsonl, weight: 2}\n")
    assert main(["fit", "--tasks", "asr,ved", "--out", str(tmp_path / "two"), f"data.train={mixture}",
                 f"data.val={prepared / 'esc' / 'fold2.jsonl'}", f"data.test={libri / 'test-clean.jsonl'}", *TINY]) == 0
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert os.path.isfile(tmp_path / "two" / "checkpoints" / "last.ckpt") and "asr" in json.dumps(metrics)


# ----------------------------------------------------------------------------------------------------------
# Common Voice: Mozilla's cv-corpus-<version>/<locale>/{train,dev,test}.tsv + clips/*.mp3, and Kaggle's copy.

OLD_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
NEW_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
               "gender", "accents", "variant", "locale", "segment"]


def write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    # As the release writes them: tab-separated, quotes left as they are in the sentence.
    text = "\t".join(columns) + "\n" + "".join("\t".join(row.get(c, "") for c in columns) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def commonvoice_release(root: Path) -> Path:
    release = root / "cv-corpus-17.0-2024-03-15"
    en = [  # the 16.x columns and gender values
        {"client_id": "c1", "path": "common_voice_en_1.mp3", "sentence": '"Quoted, he said, and never closed',
         "age": "twenties", "gender": "male", "locale": "en"},
        {"client_id": "c2", "path": "common_voice_en_2.mp3", "sentence": "An old voice.", "age": "seventies", "gender": "", "locale": "en"},
        {"client_id": "c3", "path": "common_voice_en_3.mp3", "sentence": "No labels here", "locale": "en"},
        {"client_id": "c4", "path": "common_voice_en_4.mp3", "sentence": "Other gender", "gender": "other", "locale": "en"},
        {"client_id": "c5", "path": "common_voice_en_5.mp3", "sentence": "Its clip is gone", "gender": "female", "locale": "en"},
    ]
    cy = [  # the 17.0 columns and gender values
        {"client_id": "c6", "path": "common_voice_cy_1.mp3", "sentence_id": "s1", "sentence": "Bore da",
         "age": "teens", "gender": "female_feminine", "locale": "cy"},
        {"client_id": "c7", "path": "common_voice_cy_2.mp3", "sentence_id": "s2", "sentence": "Nos da",
         "age": "", "gender": "do_not_wish_to_say", "locale": "cy"},
    ]
    for locale, columns, rows in (("en", OLD_COLUMNS, en), ("cy", NEW_COLUMNS, cy)):
        folder = release / locale
        (folder / "clips").mkdir(parents=True)
        for index, row in enumerate(rows):
            if row["path"] != "common_voice_en_5.mp3":
                noise(folder / "clips" / row["path"], 0.5, seed=index)
        write_tsv(folder / "train.tsv", columns, rows)
        write_tsv(folder / "validated.tsv", columns, rows)  # not a subset osum prepares
    write_tsv(release / "en" / "test.tsv", OLD_COLUMNS, en[:1])
    return release


def test_commonvoice_gender_and_age_lines_old_and_new_columns_and_unclosed_quotes(tmp_path, registry):
    release = commonvoice_release(tmp_path)
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["commonvoice"], release, out, registry.tasks, workers=0, log=lambda m: None)
    assert sorted(report["subsets"]) == ["test", "train"]
    train = {x["key"]: x for x in lines(out / "train.jsonl")}
    en1 = str(release / "en" / "clips" / "common_voice_en_1.mp3")
    assert train["common_voice_en_1_sgc"] == {
        "key": "common_voice_en_1_sgc", "txt": '"quoted, he said, and never closed<male>', "task": "<TRANSCRIBE> <GENDER>",
        "gender": "male", "extra": {"raw_label": "male"}, "wav": en1, "lang": "en", "speaker": "c1", "duration": 0.5}
    assert train["common_voice_en_1_sap"]["txt"].endswith("<adult>")
    assert train["common_voice_en_2_sap"]["txt"] == "an old voice.<old>" and "common_voice_en_2_sgc" not in train
    assert train["common_voice_en_3_asr"]["txt"] == "no labels here" and train["common_voice_en_3_asr"]["task"] == "<TRANSCRIBE>"
    assert train["common_voice_en_4_asr"]["txt"] == "other gender"  # no OSUM gender: transcribed instead
    assert train["common_voice_cy_1_sgc"]["txt"] == "bore da<female>" and train["common_voice_cy_1_sap"]["txt"] == "bore da<child>"
    assert train["common_voice_cy_2_asr"]["lang"] == "cy"
    part = report["subsets"]["train"]
    assert part["mapping"]["sgc"] == {"female_feminine": {"<female>": 1}, "male": {"<male>": 1}}
    assert part["mapping"]["sap"] == {"seventies": {"<old>": 1}, "teens": {"<child>": 1}, "twenties": {"<adult>": 1}}
    assert part["left_out"]["unmapped_labels"] == {"do_not_wish_to_say": 1, "other": 1}
    assert part["left_out"]["by_reason"] == {"label not mapped": 2, "no audio": 1}
    assert main(["data", "check", str(out / "train.jsonl"), "--tasks", "sgc,sap,asr", "--quiet"]) == 0
    # One locale folder on its own is a source too.
    one = prepare_corpus(registry.corpora["commonvoice"], release / "cy", tmp_path / "cy", registry.tasks, workers=0,
                         log=lambda m: None)
    assert one["subsets"]["train"]["items"] == 3


def test_a_commonvoice_table_without_its_columns_names_them(tmp_path, registry):
    release = commonvoice_release(tmp_path)
    write_tsv(release / "en" / "train.tsv", ["client_id", "filename", "text"], [])
    with pytest.raises(PrepareError, match=r"train.tsv: no column path, sentence \(its columns: client_id, filename, text\)"):
        prepare_corpus(registry.corpora["commonvoice"], release, tmp_path / "out", registry.tasks, log=lambda m: None)


def test_kaggle_commonvoice_reads_both_folder_layouts(tmp_path, registry):
    root = tmp_path / "common-voice"
    header = "filename,text,up_votes,down_votes,age,gender,accent,duration\n"
    (root).mkdir()
    (root / "cv-valid-test.csv").write_text(header + "cv-valid-test/sample-000000.mp3,learn to recognize omens,1,0,"
                                            "fifties,female,england,\ncv-valid-test/sample-000001.mp3,gone,1,0,,,,\n")
    (root / "cv-valid-dev.csv").write_text(header + 'cv-valid-dev/sample-000000.mp3,"be careful, now",2,0,,male,,\n'
                                           "cv-valid-dev/sample-000001.mp3,an extra, comma,2,0,,male,,\n")
    noise(root / "cv-valid-test" / "cv-valid-test" / "sample-000000.mp3", 0.5)  # as Kaggle's archive nests it
    noise(root / "cv-valid-dev" / "sample-000000.mp3", 0.5)
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["kaggle-commonvoice"], tmp_path, out, registry.tasks, workers=0,
                            log=lambda m: None)
    assert sorted(report["subsets"]) == ["cv-valid-dev", "cv-valid-test"]
    test = lines(out / "cv-valid-test.jsonl")
    assert [(x["key"], x["txt"]) for x in test] == [("cv-valid-test-sample-000000_sgc", "learn to recognize omens<female>"),
                                                    ("cv-valid-test-sample-000000_sap", "learn to recognize omens<adult>")]
    dev = lines(out / "cv-valid-dev.jsonl")
    assert [(x["key"], x["txt"]) for x in dev] == [("cv-valid-dev-sample-000000_sgc", "be careful, now<male>")]
    assert report["subsets"]["cv-valid-dev"]["left_out"]["list"][0]["reason"] == "unreadable row"
    assert report["subsets"]["cv-valid-test"]["left_out"]["list"][0]["reason"] == "no audio"


# ----------------------------------------------------------------------------------------------------------
# MELD: MELD.Raw/{split}_sent_emo.csv + train_splits/ dev_splits_complete/ output_repeated_splits_test/ *.mp4


def mp4_clip(path: Path, seconds: float, seed: int = 0) -> Path:
    """A video clip as MELD ships them: an MPEG-4 video stream and an AAC audio stream (44.1 kHz stereo)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 44100
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "stereo"
        for index in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 20 % 255, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        samples = (np.random.default_rng(seed).standard_normal((2, int(seconds * rate))) * 0.1).astype(np.float32)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)
    return path


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def meld_release(root: Path) -> Path:
    corpus = root / "MELD.Raw"
    rows = {
        "train": [("also I was the point person on my company\u2019s transition", "Chandler", "neutral", 0, 0),
                  ("Oh my God!", "Monica", "joy", 0, 1),
                  ('"Yeah, right."', "Ross", "sadness", 1, 0),
                  ("broken one", "Joey", "anger", 125, 3)],
        "dev": [("Hey!", "Rachel", "surprise", 0, 0), ("gone", "Ross", "fear", 110, 7), ("lost clip", "Ross", "fear", 3, 1)],
    }
    for split, table in rows.items():
        # train's archive unpacks its table beside the clips: both in MELD.Raw/ (as here) or under train/.
        folder = corpus if split == "dev" else corpus / "train"
        folder.mkdir(parents=True, exist_ok=True)
        body = "".join(f'{n},"{text.replace(chr(34), chr(34) * 2)}",{who},{emotion},x,{d},{u},1,1,0,1\n'
                       for n, (text, who, emotion, d, u) in enumerate(table, 1))
        (folder / f"{split}_sent_emo.csv").write_bytes((MELD_HEADER + body).encode("cp1252"))
        clips = folder / ("train_splits" if split == "train" else "dev_splits_complete")
        for text, _, _, d, u in table:
            if (split, d, u) not in (("dev", 110, 7), ("dev", 3, 1)):
                mp4_clip(clips / f"dia{d}_utt{u}.mp4", 0.6, seed=d + u)
    mp4_clip(corpus / "dev_splits_complete" / "dia66_utt9.mp4", 0.4)  # a clip without a row
    (corpus / "test.tar.gz").write_bytes(b"\x1f\x8b")  # test not unpacked, with its table present
    (corpus / "test_sent_emo.csv").write_text(MELD_HEADER)
    return corpus


def test_meld_extracts_the_audio_of_its_video_clips_once_and_reports_the_release_quirks(tmp_path, registry):
    release = meld_release(tmp_path)
    (release / "test_sent_emo.csv").unlink()  # so that test is not a subset here (see the next test)
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["meld"], tmp_path, out, registry.tasks, workers=2, log=lambda m: None)
    train = lines(out / "train.jsonl")
    assert [(x["key"], x["txt"]) for x in train] == [
        ("meld-train-dia0_utt0_ser", "also i was the point person on my company's transition<neutral>"),
        ("meld-train-dia0_utt1_ser", "oh my god!<happy>"),
        ("meld-train-dia1_utt0_ser", '"yeah, right."<sad>')]
    first = train[0]
    assert first["wav"] == str(out / "audio" / "train" / "MELD.Raw" / "train" / "train_splits" / "dia0_utt0.wav")
    assert first["extra"] == {"raw_label": "neutral", "source_file": str(release / "train/train_splits/dia0_utt0.mp4")}
    assert soundfile.info(first["wav"]).samplerate == 16000 and abs(first["duration"] - 0.6) < 0.06
    assert (first["speaker"], first["lang"]) == ("Chandler", "en")
    part = report["subsets"]["train"]
    assert part["mapping"]["ser"] == {"joy": {"<happy>": 1}, "neutral": {"<neutral>": 1}, "sadness": {"<sad>": 1}}
    assert part["left_out"]["list"] == [{"item": str(release / "train/train_sent_emo.csv") + ":5", "reason": "known broken",
                                         "detail": "dia125_utt3.mp4: corrupted in the release (MELD issue #39)"}]
    dev = report["subsets"]["dev"]["left_out"]["by_reason"]
    assert dev == {"known broken": 1, "no audio": 1, "not in dev_sent_emo.csv": 1}
    # Extracted once: a re-run of a redone subset keeps the WAVs it finds.
    wav = Path(first["wav"])
    stamp = wav.stat().st_mtime_ns
    (out / PARTS_DIR / "train.json").unlink()
    prepare_corpus(registry.corpora["meld"], tmp_path, out, registry.tasks, workers=0, log=lambda m: None)
    assert wav.stat().st_mtime_ns == stamp
    assert main(["data", "check", str(out / "train.jsonl"), "--tasks", "ser", "--quiet"]) == 0


def test_meld_with_an_archive_still_packed_says_so(tmp_path, registry):
    meld_release(tmp_path)
    with pytest.raises(PrepareError, match=r"test.tar.gz is not unpacked: tar -xzf"):
        prepare_corpus(registry.corpora["meld"], tmp_path, tmp_path / "out", registry.tasks, log=lambda m: None)


# ----------------------------------------------------------------------------------------------------------
# VocalSound: audio_16k/<f|m><id>_<n>_<label>.wav, datafiles/{tr,val,te}.json with the authors' paths


def test_vocalsound_splits_by_its_datafiles_matched_by_file_name(tmp_path, registry):
    root = tmp_path / "vs_release_16k"
    names = {"tr": ["f0003_0_cough.wav", "m0010_0_laughter.wav", "f0003_0_sniff.wav", "m0010_0_gone.wav"],
             "val": ["m0100_0_throatclearing.wav"], "te": ["f0200_1_sneeze.wav", "f0200_0_sigh.wav"]}
    (root / "datafiles").mkdir(parents=True)
    for split, files in names.items():
        data = [{"wav": f"/data/sls/scratch/yuangong/vocalsound/data/audio_16k/{n}", "labels": "/m/01b_21"} for n in files]
        (root / "datafiles" / f"{split}.json").write_text(json.dumps({"data": data}))
        for name in files:
            if name != "f0200_0_sigh.wav":
                noise(root / "audio_16k" / name, 0.5)
    noise(root / "audio_16k" / "m0999_0_cough.wav", 0.5)  # in no split file
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["vocalsound"], tmp_path, out, registry.tasks, workers=0, log=lambda m: None)
    train = lines(out / "train.jsonl")
    assert train[0] == {"key": "f0003_0_cough_ved", "wav": str(root / "audio_16k/f0003_0_cough.wav"), "txt": "<cough>",
                        "task": "<TRANSCRIBE> <CAPTION>", "speaker": "f0003", "gender": "female",
                        "extra": {"raw_label": "cough"}, "duration": 0.5}
    assert [x["txt"] for x in train] == ["<cough>", "<laugh>", "<other>"]
    assert [x["txt"] for x in lines(out / "dev.jsonl")] == ["<throat clearing>"]
    assert [x["txt"] for x in lines(out / "test.jsonl")] == ["<sneeze>"]
    left = report["subsets"]["train"]["left_out"]
    assert left["by_reason"] == {"label not mapped": 1, "in no split file": 1}
    assert left["unmapped_labels"] == {"gone": 1}
    assert report["subsets"]["test"]["left_out"]["by_reason"] == {"no audio": 1}


# ----------------------------------------------------------------------------------------------------------
# WenetSpeech: WenetSpeech.json (audios[] with segments[]) and audio/<subset>/<source>/<id>.opus recordings


def test_wenetspeech_segments_of_opus_recordings_by_subset(tmp_path, registry, capsys):
    root = tmp_path / "WenetSpeech"
    recordings = [
        ("Y0000000000_a", "audio/train/youtube/B00000/Y0000000000_a.opus", 6.0,
         [("Y0000000000_a_S00000", 0.5, 2.0, "怎么样 这些 日子", ["S", "M", "L"]),
          ("Y0000000000_a_S00001", 2.5, 5.5, "住得还习惯吧", ["M", "L"]),
          ("Y0000000000_a_S00002", 5.0, 9.0, "past the end", ["M", "L"])]),
        ("Y0000000001_b", "audio/train/youtube/B00000/Y0000000001_b.opus", 0,  # its file is missing
         [("Y0000000001_b_S00000", 0.0, 1.0, "没有音频", ["M", "L"])]),
        ("T0000000000_c", "audio/test/net/T0000000000_c.opus", 4.0,
         [("T0000000000_c_S00000", 1.0, 3.0, "测试 集", ["TEST_NET"])]),
    ]
    audios = []
    for aid, path, seconds, segments in recordings:
        if seconds:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            samples = (np.random.default_rng(0).standard_normal(int(seconds * 48000)) * 0.1).astype(np.float32)
            soundfile.write(root / path, samples, 48000, format="OGG", subtype="OPUS")
        audios.append({"aid": aid, "duration": seconds, "format": "opus", "path": path, "source": "youtube",
                       "segments": [{"sid": sid, "begin_time": b, "end_time": e, "confidence": 1.0, "subsets": subsets,
                                     "text": text} for sid, b, e, text, subsets in segments]})
    (root / "WenetSpeech.json").write_text(json.dumps({"dataset": "WenetSpeech", "version": "v1.0", "audios": audios},
                                                      ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    report = prepare_corpus(registry.corpora["wenetspeech"], root, out, registry.tasks, splits=["m", "test_net"],
                            workers=0, log=lambda m: None)
    m = lines(out / "m.jsonl")
    wav = str(root / "audio/train/youtube/B00000/Y0000000000_a.opus")
    assert m[0] == {"key": "Y0000000000_a_S00000_asr", "wav": wav, "start": 0.5, "end": 2.0, "txt": "怎么样这些日子",
                    "task": "<TRANSCRIBE>", "lang": "zh", "extra": {"source": "youtube", "confidence": 1.0},
                    "duration": 1.5}
    assert [x["key"] for x in m] == ["Y0000000000_a_S00000_asr", "Y0000000000_a_S00001_asr"]
    assert report["subsets"]["m"]["left_out"]["by_reason"] == {"no audio": 1, "segment outside its audio": 1}
    assert [x["txt"] for x in lines(out / "test_net.jsonl")] == ["测试集"]
    assert report["subsets"]["m"]["hours"] == round(4.5 / 3600, 4)
    assert main(["data", "check", str(out / "m.jsonl"), "--tasks", "asr", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["hours"] == pytest.approx(4.5 / 3600, abs=1e-4)


def test_duplicate_keys_keep_the_first_and_every_left_out_item_is_in_its_file(tmp_path, registry):
    wav = noise(tmp_path / "src" / "clips" / "a.wav", 0.3)

    def read(source: Path, split: str):
        for index in range(150):
            yield LeftOut(f"row {index}", "label not mapped", "grunt" if index % 2 else "hum")
        for key in ("k1", "k2", "k1", "k3", "k2"):
            yield {"key": key, "wav": str(wav), "txt": f"{key}<laugh>", "task": "<TRANSCRIBE> <CAPTION>"}

    recipe = CorpusRecipe("dups", "", ("ved",), ("all",), "", find_one, read)
    report = prepare_corpus(recipe, tmp_path / "src", tmp_path / "out", registry.tasks, workers=0, log=lambda m: None)
    assert [x["txt"] for x in lines(tmp_path / "out" / "all.jsonl")] == ["k1<laugh>", "k2<laugh>", "k3<laugh>"]
    left = report["subsets"]["all"]["left_out"]
    assert left["items"] == 152 and left["by_reason"] == {"label not mapped": 150, "duplicate key": 2}
    assert left["unmapped_labels"] == {"grunt": 75, "hum": 75}
    assert len(left["list"]) == 100 and len(lines(tmp_path / "out" / left["file"])) == 152
    assert [x["item"] for x in lines(tmp_path / "out" / left["file"])][-2:] == ["k1", "k2"]


def test_a_segment_without_its_end_is_left_out_as_training_would_refuse_it(tmp_path, registry):
    wav = noise(tmp_path / "src" / "clips" / "long.wav", 3.0)

    def read(source: Path, split: str):
        yield {"key": "whole", "wav": str(wav), "txt": "one<laugh>", "task": "<TRANSCRIBE> <CAPTION>", "start": 0.5, "end": 2.0}
        yield {"key": "open", "wav": str(wav), "txt": "two<laugh>", "task": "<TRANSCRIBE> <CAPTION>", "start": 1.0}

    recipe = CorpusRecipe("segments", "", ("ved",), ("all",), "", find_one, read)
    report = prepare_corpus(recipe, tmp_path / "src", tmp_path / "out", registry.tasks, workers=0, log=lambda m: None)
    assert [(x["key"], x["duration"]) for x in lines(tmp_path / "out" / "all.jsonl")] == [("whole", 1.5)]
    (entry,) = report["subsets"]["all"]["left_out"]["list"]
    assert entry["reason"] == "unreadable segment" and "0 <= start < end" in entry["detail"]


def test_wenetspeech_prepares_l_and_the_evaluation_subsets_unless_told(tmp_path, registry):
    root = tmp_path / "WenetSpeech"
    root.mkdir()
    (root / "WenetSpeech.json").write_text(json.dumps({"audios": []}))
    report = prepare_corpus(registry.corpora["wenetspeech"], root, tmp_path / "out", registry.tasks, log=lambda m: None)
    assert list(report["subsets"]) == ["l", "dev", "test_net", "test_meeting"]
