"""The built-in OSUM tasks: prompts, targets, parsers, metrics, options and their demo data."""

import json

import numpy as np
import pytest
import soundfile

from osum_core.cli.fit import configured_tasks
from osum_core.config.load import ConfigError
from osum_core.data.manifest import read_manifest
from osum_core.task import Target

OSUM_TASKS = ("asr", "srwt", "ved", "ser", "ssr", "sgc", "sap", "sttc")


def test_the_eight_tasks_have_osum_tags_and_five_prompts_per_language(registry):
    tags = {name: registry.tasks[name].tag for name in OSUM_TASKS}
    assert tags == {
        "asr": "<TRANSCRIBE>", "srwt": "<TRANSCRIBE> <ALIGN>", "ved": "<TRANSCRIBE> <CAPTION>",
        "ser": "<TRANSCRIBE> <EMOTION>", "ssr": "<TRANSCRIBE> <STYLE>", "sgc": "<TRANSCRIBE> <GENDER>",
        "sap": "<TRANSCRIBE> <AGE>", "sttc": "<TRANSCRIBE> <S2TCHAT>",
    }
    for name in OSUM_TASKS:
        task = registry.tasks[name]
        assert len(task.prompts["zh"]) == 5 and len(task.prompts["en"]) == 5, name
        assert registry.packages[name] == "osum"
    assert registry.tasks["ser"].prompts["zh"][0].startswith("请将以下音频内容进行转录，并在结尾处给出<情感>标签")
    assert registry.tasks["ssr"].labels == ("新闻科普", "恐怖故事", "童话故事", "客服", "诗歌散文", "有声书", "日常口语", "其他")
    assert registry.tasks["sap"].labels == ("child", "adult", "old")
    assert registry.tasks["sgc"].labels == ("female", "male")


def test_style_and_age_map_osum_s_older_label_sets(registry):
    ssr, sap = registry.tasks["ssr"], registry.tasks["sap"]
    assert ssr.build_target({"txt": "一二三<科幻>"}) == Target("一二三", "<有声书>")
    assert ssr.build_target({"txt": "one", "style": "朗读"}) == Target("one", "<新闻科普>")
    assert ssr.parse_output("one<散文>").label == "诗歌散文"
    assert sap.build_target({"txt": "one two<Middle_Age>"}) == Target("one two", "<adult>")
    assert sap.parse_output("one<youth>").label == "adult"
    with pytest.raises(ValueError, match="not one of"):
        sap.build_target({"txt": "one<teen>"})


def test_srwt_serialises_word_times_at_the_resolution_and_reads_them_back(registry):
    srwt = registry.tasks["srwt"]
    example = {"txt": "four two", "extra": {"words": [["four", 0.04, 0.36], ["two", 0.41, 0.78]]}}
    target = srwt.build_target(example)
    assert target == Target("four two", "", "<0.0>four<0.4><0.4>two<0.8>")
    assert target.text == "<0.0>four<0.4><0.4>two<0.8>"
    # OSUM-style data that already has the timestamps in txt
    assert srwt.build_target({"txt": "<0.0> four <0.4><0.4>two<0.8>"}) == target
    prediction = srwt.parse_output("<0.1>four<0.4><0.5>two<0.8>")
    assert prediction.transcript == "four two"
    assert prediction.fields["timestamps"] == [("four", 0.1, 0.4), ("two", 0.5, 0.8)]
    for text in ["", "<", "four<0.3>", "<0.a>four<>", "<<>>", "four two"]:
        assert srwt.parse_output(text).text == text
    assert srwt.parse_output("four two").transcript == "four two"
    with pytest.raises(ValueError, match="extra.words"):
        srwt.build_target({"txt": "four"})


def test_srwt_metric_is_the_mean_boundary_shift_over_matched_words(registry):
    srwt = registry.tasks["srwt"]
    target = srwt.build_target({"txt": "", "extra": {"words": [["a", 0.0, 0.4], ["b", 0.4, 0.8], ["c", 0.9, 1.2]]}})
    metric = srwt.make_metric()
    # a: start off by 0.1 s; b: exact; c missing (wrong word) -> not matched, counts in WER only
    metric.update([srwt.parse_output("<0.1>a<0.4><0.4>b<0.8><0.9>x<1.2>")], [target])
    scores = metric.compute()
    assert scores["timestamp_error_ms"] == pytest.approx(25.0)  # (100 + 0 + 0 + 0) / 4 boundaries
    assert scores["matched_words"] == pytest.approx(2 / 3)
    assert scores["wer"] == pytest.approx(1 / 3)


def test_srwt_format_is_a_task_option_set_in_the_config(registry):
    tasks = configured_tasks(
        registry.tasks, ["srwt"], {"srwt": {"word_format": "{word}<{start},{end}>", "resolution": 0.05, "loss_weight": 2}}
    )
    srwt = tasks["srwt"]
    target = srwt.build_target({"txt": "", "extra": {"words": [["four", 0.04, 0.36]]}})
    assert target.body == "four<0.05,0.35>" and srwt.loss_weight == 2.0
    assert srwt.parse_output("four<0.05,0.35>").fields["timestamps"] == [("four", 0.05, 0.35)]
    assert srwt.options == {"word_format": "{word}<{start},{end}>", "resolution": 0.05}
    with pytest.raises(ConfigError, match="tasks.srwt.word_fmt"):
        configured_tasks(registry.tasks, ["srwt"], {"srwt": {"word_fmt": "x"}})
    with pytest.raises(ConfigError, match="lacks"):
        configured_tasks(registry.tasks, ["srwt"], {"srwt": {"word_format": "<{start}>{word}"}})
    with pytest.raises(ConfigError, match="tasks.ved.resolution"):
        configured_tasks(registry.tasks, ["ved"], {"ved": {"resolution": 0.1}})


def test_sttc_splits_transcript_and_reply_and_scores_the_reply(registry):
    sttc = registry.tasks["sttc"]
    target = sttc.build_target({"txt": "What is two plus two<开始回答>Four"})
    assert target == Target("what is two plus two", "<开始回答>four", heard_suffix=False)  # the reply is not heard
    assert sttc.build_target({"txt": "hi", "reply": "hello"}).suffix == "<开始回答>hello"
    with pytest.raises(ValueError, match="reply"):
        sttc.build_target({"txt": "hi"})
    assert sttc.parse_output("what is two<开始回答>four").fields == {"reply": "four"}
    assert sttc.parse_output("no answer").fields == {"reply": ""}
    metric = sttc.make_metric()
    metric.update(
        [sttc.parse_output("what is two plus two<开始回答>four"), sttc.parse_output("what is one plus one<开始回答>three")],
        [target, sttc.build_target({"txt": "what is one plus one<开始回答>two"})],
    )
    scores = metric.compute()
    assert scores["reply_exact"] == 0.5 and scores["wer"] == 0.0
    assert 0.0 < scores["reply_chrf"] < 1.0


def test_age_gender_composites_reuse_sap_and_sgc(registry):
    with_words, labels_only = registry.tasks["asr_age_gender"], registry.tasks["age_gender"]
    assert with_words.tag == "<TRANSCRIBE> <AGE> <GENDER>" and labels_only.tag == "<AGE> <GENDER>"
    assert with_words.build_target({"txt": "one<youth><female>"}) == Target("one", "<adult><female>")
    # without the transcript, the LLM writes the labels alone; the line's words stay the CTC head's target
    labels = labels_only.build_target({"txt": "one two", "age": "old", "gender": "male"})
    assert labels == Target("one two", "<old><male>", transcribed=False) and labels.text == "<old><male>"
    with pytest.raises(ValueError, match="2 label"):
        with_words.build_target({"txt": "one<adult>"})
    prediction = with_words.parse_output("one<child><male>")
    assert prediction.fields == {"age": "child", "gender": "male"} and prediction.label == "child"
    metric = labels_only.make_metric()
    metric.update(
        [labels_only.parse_output("<child><male>"), labels_only.parse_output("<adult><female>"), labels_only.parse_output("")],
        [Target("", "<child><male>"), Target("", "<adult><male>"), Target("", "<old><female>")],
    )
    scores = metric.compute()
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["age_accuracy"] == pytest.approx(2 / 3) and scores["gender_accuracy"] == pytest.approx(1 / 3)
    assert scores["age_invalid"] == 1 and "wer" not in scores


def test_demo_corpus_realises_every_task_s_labels(all_tasks_corpus, registry):
    lines = read_manifest(all_tasks_corpus / "train.jsonl") + read_manifest(all_tasks_corpus / "test.jsonl")
    by_tag = {}
    for line in lines:
        by_tag.setdefault(line["task"], []).append(line)
        task = next(t for t in registry.tasks.values() if t.selects(line))
        task.build_target(line)  # every line is a valid example of its task
    expected = {t.tag for t in registry.tasks.values() if t.tag in registry.recipes}
    assert set(by_tag) == expected
    for line in by_tag["<TRANSCRIBE> <GENDER>"]:
        assert line["txt"].endswith(f"<{line['gender']}>")
        assert line["speaker"][-2] == line["gender"][0]  # en-us+f1 is female
    for line in by_tag["<TRANSCRIBE> <S2TCHAT>"]:
        numbers = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen".split()
        question, reply = line["txt"].split("<开始回答>")
        _, _, a, _, b = question.split()
        assert numbers.index(reply) == numbers.index(a) + numbers.index(b)
    for line in by_tag["<TRANSCRIBE> <ALIGN>"]:
        words = line["extra"]["words"]
        assert [w for w, _, _ in words] == line["txt"].split()
        assert all(0 <= s < e <= line["duration"] + 1e-3 for _, s, e in words)
    # A child's voice is the speech sped up: its word times are scaled with it and stay inside the audio.
    for line in by_tag["<TRANSCRIBE> <AGE>"]:
        assert line["extra"]["words"][-1][2] <= line["duration"] + 1e-3
        audio, rate = soundfile.read(all_tasks_corpus / line["wav"])
        assert rate == 16000 and np.abs(audio).max() > 0.05
    corpus = json.loads((all_tasks_corpus / "corpus.json").read_text())
    assert corpus["counts"]["train"] == 6 * len(expected)


@pytest.mark.parametrize(("name", "txt", "meant"), [
    ("ser", "one two<angry>", "anger"),
    ("ser", "one two<sadness>", "sad"),
    ("sgc", "one two<femal>", "female"),
    ("ved", "one two<laughter>", "laugh"),
    ("ved", "one two<throat_clearing>", "throat clearing"),
    ("sap", "one two<midle_age>", "middle_age"),  # a raw label the aliases take
    ("ssr", "one two<新闻>", "新闻科普"),
    ("asr_age_gender", "one two<adult><femal>", "female"),
])
def test_a_label_close_to_one_in_the_set_is_suggested(registry, name, txt, meant):
    with pytest.raises(ValueError, match=f"is not one of .*; did you mean '{meant}'\\?$"):
        registry.tasks[name].build_target({"txt": txt})


def test_a_label_close_to_none_gets_no_suggestion(registry):
    with pytest.raises(ValueError) as error:
        registry.tasks["ser"].build_target({"txt": "one two<xyz>"})
    assert "did you mean" not in str(error.value)
