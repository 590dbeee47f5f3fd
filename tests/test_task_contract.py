import pytest

from osum_core.task import (
    LabelField,
    Prediction,
    Target,
    Task,
    TranscriptMetric,
    normalize_target,
    normalize_transcript,
    split_suffix_tags,
    tagged_task,
)
from osum_core.task.contract import contract_problems, normalize_task_tag
from osum_core.task.metrics import LabelMetric


def make_task(**changes):
    fields = dict(
        name="asr",
        tag="<TRANSCRIBE>",
        prompts={"en": ["Transcribe."]},
        build_target=lambda ex: Target(ex["txt"]),
        parse_output=lambda text: Prediction(text, text),
        make_metric=TranscriptMetric,
        metric="wer",
    )
    fields.update(changes)
    return Task(**fields)


def test_osum_target_normalisation():
    assert normalize_target("Hello World <Laugh>") == "hello world<laugh>"
    assert normalize_target("你 好 world") == "你好world"
    assert normalize_target(" ONE  two <THROAT CLEARING> ") == "one  two<throat clearing>"


def test_scoring_normalisation_splits_cjk_and_drops_punctuation():
    assert normalize_transcript("Hello, World!") == "hello world"
    assert normalize_transcript("你好world") == "你 好 world"


def test_suffix_tags():
    assert split_suffix_tags("one two<laugh>") == ("one two", ["laugh"])
    assert split_suffix_tags("a b<adult><female>") == ("a b", ["adult", "female"])
    assert split_suffix_tags("no tags here") == ("no tags here", [])
    assert split_suffix_tags("<laugh> in front") == ("<laugh> in front", [])


def test_task_tags_compare_in_one_spelling():
    assert normalize_task_tag("<TRANSCRIBE><CAPTION>") == "<TRANSCRIBE> <CAPTION>"
    task = make_task(tag="<TRANSCRIBE><CAPTION>")
    assert task.tag == "<TRANSCRIBE> <CAPTION>"
    assert task.selects({"task": "<TRANSCRIBE>  <CAPTION>"})
    assert not task.selects({"task": "<TRANSCRIBE>"})


def test_line_without_task_field_is_transcription():
    assert make_task().selects({"txt": "x"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "ASR"}, "lowercase identifier"),
        ({"tag": "TRANSCRIBE"}, "tag must look like"),
        ({"prompts": {}}, "at least one prompt"),
        ({"labels": ("a", "a")}, "labels repeat"),
        ({"labels": ("<a>",)}, "without '<' or '>'"),
        ({"loss_weight": -1}, "loss_weight must be a number >= 0"),
        ({"make_metric": None}, "make_metric must be callable"),
    ],
)
def test_contract_violations_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        make_task(**changes)


def test_prompt_banks():
    task = make_task(prompts={"zh": ["转录。"], "en": ["Transcribe.", "Write it down."]})
    assert task.prompt_bank("zh") == ("转录。",)
    assert task.prompt_bank("both") == ("转录。", "Transcribe.", "Write it down.")
    assert make_task().prompt_bank("zh") == ("Transcribe.",)  # falls back to the bank that exists


def test_tagged_task_targets_from_txt_or_field():
    task = tagged_task("ved", "<TRANSCRIBE> <CAPTION>", {"en": ["x"]}, [LabelField("event", ("laugh", "throat clearing"))])
    assert task.build_target({"txt": "One Two<Laugh>"}) == Target("one two", "<laugh>")
    assert task.build_target({"txt": "one", "event": "throat clearing"}) == Target("one", "<throat clearing>")
    with pytest.raises(ValueError, match="'event'"):
        task.build_target({"txt": "one"})
    with pytest.raises(ValueError, match="not one of"):
        task.build_target({"txt": "one<sneeze>"})
    assert contract_problems(task) == []


def test_tagged_task_parser_never_raises():
    task = tagged_task("ved", "<TRANSCRIBE> <CAPTION>", {"en": ["x"]}, [LabelField("event", ("laugh",))])
    for text in ["", "<", "one two<laugh>", "<<>>", "one <laugh> two", "one two<laugh><cough>"]:
        prediction = task.parse_output(text)
        assert prediction.text == text
    assert task.parse_output("one two<laugh>").label == "laugh"
    assert task.parse_output("one two").label is None


def test_transcript_metric_wer():
    metric = TranscriptMetric()
    metric.update([Prediction("", "one two three")], [Target("one two four")])
    metric.update([Prediction("", "Five, six!")], [Target("five six")])
    scores = metric.compute()
    assert scores["wer"] == pytest.approx(1 / 5)
    assert scores["count"] == 2


def test_label_metric_counts_missing_and_unknown_labels_as_wrong():
    metric = LabelMetric(["laugh", "cough"])
    predictions = [
        Prediction("", "a", "laugh"),
        Prediction("", "a", "cough"),
        Prediction("", "a", None),
        Prediction("", "a", "sneeze"),
    ]
    targets = [Target("a", "<laugh>"), Target("a", "<laugh>"), Target("a", "<cough>"), Target("a", "<cough>")]
    metric.update(predictions, targets)
    scores = metric.compute()
    assert scores["accuracy"] == pytest.approx(0.25)
    assert scores["invalid"] == 2
    assert scores["wer"] == 0.0
    # laugh: precision 1/1, recall 1/2 -> F1 2/3; cough: precision 0/1 -> F1 0.
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
