"""Generated text is never an exception: every installed task's parser turns any output into a `Prediction`,
marks the malformed ones invalid, and scoring counts an invalid answer wrong (its recovered words still get a
WER)."""

from __future__ import annotations

import pytest

from osum_core.inference.scoring import Scorer
from osum_core.plugins import load_tasks
from osum_core.task import Prediction, Task

INSTALLED = load_tasks()  # collection needs the names; the `registry` fixture loads the same

# Built-in tasks: a manifest line, a well-formed answer to it, and malformed answers (beyond the ones every
# task shares, below). Installed tasks of other packages get the shared cases only.
CASES: dict[str, tuple[dict, str, list[str]]] = {
    "asr": (
        {"txt": "one two three"},
        "one two three",
        ["one two<laugh>", "one <noise> two", "one two<", "one > two", "<|endoftext|>"],
    ),
    "srwt": (
        {"txt": "", "extra": {"words": [["four", 0.1, 0.4], ["two", 0.5, 0.8]]}},
        "<0.1>four<0.4><0.5>two<0.8>",
        [
            "four two",  # no tag
            "<1.2>",  # a time without a word
            "<1.2>four",  # no end time
            "<a.bc>four<0.4>",  # not a number
            "<0.1>four<0.4><0.5>two<",  # unclosed <
            "<0.1>four<0.4><0.5>two<0.8",  # the last time cut off
            "<0.8>four<0.4>",  # ends before it starts
            "<0.5>four<0.6><0.1>two<0.8>",  # starts before the word before it
            "<0.1>four<0.4><0.5>two<0.8> and then",  # text after the last tag
            "<0.1>four<0.4><laugh>",  # an unknown tag
            "<0.1> <0.4>",  # an empty word
            "<0.1><0.4>",
            "<" + "9" * 400 + ">four<" + "9" * 401 + ">",  # times that are not finite
            "<1e5>four<2e5>",
        ],
    ),
    "ved": (
        {"txt": "one two<laugh>"},
        "one two<laugh>",
        ["one two", "one two<giggle>", "one two<laugh> and more", "one two<laugh><cough>", "one two<laugh", "<>"],
    ),
    "ser": ({"txt": "one<happy>"}, "one<happy>", ["one", "one<joy>", "one<happy> ok", "one<happy><sad>"]),
    "ssr": ({"txt": "一二三<客服>"}, "一二三<客服>", ["一二三", "一二三<未知>", "一二三<客服>好", "一二三<客服"]),
    "sgc": ({"txt": "one<male>"}, "one<male>", ["one", "one<man>", "one<male><female>", "one<male>."]),
    "sap": ({"txt": "one<adult>"}, "one<adult>", ["one", "one<teen>", "one<adult> two"]),
    "sttc": (
        {"txt": "what is two plus two<开始回答>four"},
        "what is two plus two<开始回答>four",
        [
            "what is two plus two",  # no <开始回答>
            "what is two plus two<开始回答>",  # no reply
            "what is two plus two<开始回答>  ",
            "what is<开始回答>four<开始回答>five",  # two of them
            "what is two<laugh><开始回答>four",  # an unknown tag in the transcript
            "what is two<开始回答",  # unclosed
        ],
    ),
    "asr_age_gender": (
        {"txt": "one<adult><female>"},
        "one<adult><female>",
        ["one", "one<adult>", "one<adult><woman>", "one<female><adult>", "one<adult><female> x", "one<adult><female><x>"],
    ),
    "age_gender": (
        {"txt": "", "age": "adult", "gender": "female"},
        "<adult><female>",
        ["<adult>", "one two<adult><female>", "<adult><female>!", "<adult><female><old>", "adult female"],
    ),
}

# Malformed for every task: nothing, whitespace, and characters that did not decode (U+FFFD, a lone
# surrogate, control characters). That any other output gives a `Prediction` without raising is
# test_fuzz_tasks.py's property (over its EDGE_OUTPUTS, then generated text).
SHARED_MALFORMED = ["", " ", "\n\t ", "\ufffd", "\ufffd\ufffd\ufffd", "\x00", "\x1b[31m", "\ud800"]
GARBLE = ["\ufffd", "\ud83d", "\x00", "\x07"]  # inserted into a well-formed answer


def well_formed(task: Task) -> str | None:
    """A well-formed answer of `task`: its case, or for other packages' label tasks ``one two<label>``."""
    if task.name in CASES:
        return CASES[task.name][1]
    guess = f"one two<{task.labels[0]}>" if task.labels else "one two"
    return guess if task.parse_output(guess).valid else None


def check(prediction: object, text: str) -> Prediction:
    assert isinstance(prediction, Prediction)
    assert prediction.text == text
    assert isinstance(prediction.transcript, str) and isinstance(prediction.valid, bool)
    assert prediction.label is None or isinstance(prediction.label, str)
    return prediction


def valid_ones(name: str, texts: list[str]) -> list[tuple[str, str]]:
    """The (task, text) of `texts` that `name`'s parser calls valid."""
    return [(name, text) for text in texts if check(INSTALLED.tasks[name].parse_output(text), text).valid]


def test_empty_or_undecoded_output_is_invalid_for_every_task():
    assert [case for name in sorted(INSTALLED.tasks) for case in valid_ones(name, SHARED_MALFORMED)] == []


def test_a_well_formed_answer_with_an_undecoded_character_inside_is_invalid():
    garbled = {}
    for name, task in INSTALLED.tasks.items():
        good = well_formed(task)
        if good is not None:
            middle = len(good) // 2
            garbled[name] = [good[:middle] + junk + good[middle:] for junk in GARBLE]
    assert set(CASES) <= set(garbled)  # every built-in task has a well-formed answer to garble
    assert [case for name in sorted(garbled) for case in valid_ones(name, garbled[name])] == []


def test_each_builtin_task_s_malformed_answers_are_invalid():
    assert [case for name in sorted(CASES) for case in valid_ones(name, CASES[name][2])] == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_well_formed_output_and_the_target_s_own_text_are_valid(name):
    task = INSTALLED.tasks[name]
    record, answer, _ = CASES[name]
    prediction = check(task.parse_output(answer), answer)
    assert prediction.valid
    assert task.parse_output(task.build_target(record).text).valid
    assert task.parse_output(f"  {answer}\n").valid  # surrounding whitespace is not malformed


def test_every_builtin_task_has_cases():
    builtin = {name for name, package in INSTALLED.packages.items() if package == "osum"}
    assert builtin == set(CASES)


def right_but_invalid(name: str) -> str:
    """The well-formed (right) answer made invalid without changing its label: its last tag repeated."""
    answer = CASES[name][1]
    return answer + answer[answer.rindex("<") :]


LABEL_TASKS = [name for name in sorted(CASES) if INSTALLED.tasks[name].metric == "accuracy"]


@pytest.mark.parametrize("name", LABEL_TASKS)
def test_an_invalid_answer_counts_wrong_even_with_the_right_label(name):
    task = INSTALLED.tasks[name]
    target = task.build_target(CASES[name][0])
    good, bad = task.parse_output(CASES[name][1]), task.parse_output(right_but_invalid(name))
    assert good.valid and not bad.valid
    assert bad.label == good.label and dict(bad.fields) == dict(good.fields)  # what it read is right

    scorer = Scorer({name: task})
    scorer.add(name, "good", good.text, target)
    scorer.add(name, "bad", bad.text, target)
    scores = scorer.evaluation().metrics[name]
    assert scores["accuracy"] == pytest.approx(0.5)
    assert [row["correct"] for row in scorer.rows] == [True, False]
    metric = task.make_metric()
    metric.update([bad], [target])
    scores = metric.compute()
    assert scores["accuracy"] == 0.0
    assert all(scores[key] == 1 for key in scores if key.endswith("invalid"))


def test_an_invalid_reply_counts_wrong_and_its_words_are_still_scored():
    sttc = INSTALLED.tasks["sttc"]
    target = sttc.build_target({"txt": "what is two plus two<开始回答>four"})
    bad = sttc.parse_output("what is two<laugh> plus two<开始回答>four")
    assert not bad.valid and bad.fields["reply"] == "four" and bad.transcript == "what is two plus two"
    metric = sttc.make_metric()
    metric.update([bad], [target])
    scores = metric.compute()
    assert scores["reply_exact"] == 0.0 and scores["wer"] == 0.0


def test_an_invalid_srwt_answer_matches_no_word_but_its_words_get_a_wer():
    srwt = INSTALLED.tasks["srwt"]
    target = srwt.build_target(CASES["srwt"][0])
    for text in ["<0.1>four<0.4><0.5>two", "<0.4>four<0.1><0.5>two<0.8>", "<0.1>four<0.4><0.5>two<0.8> x"]:
        metric = srwt.make_metric()
        prediction = srwt.parse_output(text)
        metric.update([prediction], [target])
        scores = metric.compute()
        assert not prediction.valid and scores["matched_words"] == 0.0, text
        assert scores["wer"] == (0.0 if not text.endswith("x") else 0.5), text


@pytest.mark.parametrize(
    ("name", "text", "transcript"),
    [
        ("asr", "one<noise> two<laugh>", "one two"),
        ("asr", "", ""),
        ("ved", "one two<laugh> and", "one two and"),
        ("ved", "one two<laugh", "one two"),
        ("srwt", "<0.1>four<0.4><0.5>two<0.8", "four two"),
        ("sttc", "what<laugh> is", "what is"),
    ],
)
def test_the_words_of_a_malformed_answer_are_recovered_for_the_wer(name, text, transcript):
    prediction = INSTALLED.tasks[name].parse_output(text)
    assert not prediction.valid and prediction.transcript == transcript


def test_valid_defaults_to_true_for_a_parser_that_does_not_set_it():
    """A third-party parser written before `valid` existed keeps its scores."""
    assert Prediction("one<laugh>", "one", "laugh").valid
