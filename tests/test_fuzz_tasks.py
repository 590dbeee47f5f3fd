"""Property-based fuzzing of every installed task (hypothesis): `build_target` on random manifest lines returns
a `Target` or raises one of the documented errors (ValueError for the built-in tasks; `TARGET_ERRORS`, what
osum reports as a bad line, for other packages' tasks) and leaves the line as it was; `parse_output` on random
text (a fixed list of edge cases, then generated text) returns a `Prediction` that scoring accepts. Nothing
else, ever.

Each example goes through every task, plus one drawn in that task's own shape (its labels as tags, its
label fields), so the valid paths run as well as the error paths. Examples are derandomised (the same ones on
every run: the suite does not flake) and not stored (no ``.hypothesis`` folder); to explore further, drop
``derandomize=True`` and run with ``--hypothesis-seed=N``, or raise ``max_examples``."""

from __future__ import annotations

import copy
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from osum_core.inference.scoring import Scorer
from osum_core.plugins import load_tasks
from osum_core.task import FieldsMetric, Prediction, Target, Task, is_garbled
from osum_core.task.contract import TARGET_ERRORS

INSTALLED = load_tasks()
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None)
LABELS = sorted({label for task in INSTALLED.tasks.values() for label in task.labels})
LABEL_FIELDS = ["event", "emotion", "style", "gender", "age", "language"]  # the LabelField names

# --- text: anything, pieces that hit the parsers' branches, and answers close to well-formed ones ----------

PIECES = [
    "<", ">", "<>", " ", "\n", "four", "一", "<开始回答>", "<0.1>", "<0.4>", "<1.2>", "<a.bc>", "<0.1,0.4>",
    "<" + "9" * 400 + ">", "\ufffd", "\x00", "\ud800", "<|endoftext|>", "<TRANSCRIBE>",
    *(f"<{label}>" for label in LABELS), *LABELS,
]  # fmt: skip
any_text = st.text() | st.binary(max_size=40).map(lambda b: b.decode("utf-8", errors="surrogateescape"))
pieces = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=10).map("".join)
words_text = st.sampled_from(["", "one two", "一二三", "what is two", "<laugh> one"]) | st.text(max_size=5)
junk = st.sampled_from(["", "", "", "", " ", "x", "<", "\ufffd", "<zzz>"])  # mostly none
spoken = st.sampled_from(["four", "two", "一"]) | st.text(max_size=3)


def timestamped(steps: list[tuple[float, float, str]]) -> str:
    """Words whose times follow each other (each step: gap, duration, word)."""
    out, now = [], 0.0
    for gap, duration, said in steps:
        out.append(f"<{now + gap:.1f}>{said}<{now + gap + duration:.1f}>")
        now += gap + duration
    return "".join(out)


time = st.floats(min_value=0, max_value=3).map(lambda t: f"{t:.1f}") | st.sampled_from(["a.b", "", "1e5", "9" * 400])
step = st.tuples(st.floats(min_value=0, max_value=0.5), st.floats(min_value=0, max_value=0.5), spoken)
shaped = st.one_of(
    st.tuples(st.lists(step, min_size=1, max_size=4).map(timestamped), junk).map("".join),
    st.lists(st.tuples(time, spoken, time).map(lambda t: f"<{t[0]}>{t[1]}<{t[2]}>"), max_size=3).map("".join),
    st.tuples(words_text, st.sampled_from(["<开始回答>", "", "<开始回答><开始回答>"]), words_text, junk).map("".join),
)
text = st.one_of(any_text, pieces, shaped)


def label_sets(task: Task) -> list[tuple[str, ...]]:
    """The label set of each of `task`'s label fields, in order (read off its metric; one set otherwise)."""
    metric = task.make_metric()
    if isinstance(metric, FieldsMetric):
        return [field.labels for field in metric.per_field.values()]
    return [task.labels] if task.labels else []


def one_of_labels(labels: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(labels) | st.sampled_from(labels).map(str.upper) | st.text(max_size=4)


def miscount(tags: list[str], off: int, spare: str) -> list[str]:
    """`tags` as they are (off 0), one short (off -1), or one too many (off 1, `spare` appended)."""
    return tags + [spare] if off > 0 else tags[:-1] if off < 0 else tags


def tagged_answers(task: Task) -> st.SearchStrategy[str]:
    """Words, then one tag per label field, mostly from the field's set, sometimes one tag too many or too
    few, then maybe junk."""
    right = st.tuples(*(one_of_labels(labels) for labels in label_sets(task) or [tuple(LABELS)])).map(list)
    tags = st.builds(miscount, right, st.sampled_from([0, 0, 0, 1, -1]), st.sampled_from(LABELS))
    return st.tuples(words_text, tags.map(lambda chosen: "".join(f"<{x}>" for x in chosen)), junk).map("".join)


OWN_ANSWERS = {name: tagged_answers(task) | shaped for name, task in INSTALLED.tasks.items()}

# --- manifest lines: the fields the tasks read, each present or not, of any type, and unknown fields -------

EDGE_NUMBERS = [math.inf, -math.inf, math.nan, 10**400, 1e308, -0.5, 0, "0.5", "x", "", True, None]
numbers = st.floats(min_value=0, max_value=10) | st.sampled_from(EDGE_NUMBERS) | st.floats() | st.integers()
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
word = st.tuples(text | scalars, numbers, numbers).map(list)  # [word, start, end], of any types
words = st.lists(word, min_size=1, max_size=4) | st.lists(word | json_values, max_size=4) | json_values


def manifest_lines(txt: st.SearchStrategy, labels: st.SearchStrategy) -> st.SearchStrategy[dict]:
    extra = st.fixed_dictionaries({"words": words}, optional=dict.fromkeys(LABEL_FIELDS, labels)) | json_values
    known = st.fixed_dictionaries(
        {},
        optional={
            "txt": txt,
            "extra": extra,
            "reply": text | json_values,
            "task": st.sampled_from([t.tag for t in INSTALLED.tasks.values()]) | text,
            **dict.fromkeys(LABEL_FIELDS, labels),
        },
    )
    unknown = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
    return st.tuples(known, unknown).map(lambda parts: {**parts[1], **parts[0]})


any_labels = st.sampled_from(LABELS) | st.sampled_from(LABELS).map(str.upper) | text | json_values
records = manifest_lines(st.one_of(text, json_values), any_labels)
OWN_RECORDS = {  # lines in the task's own shape: its answers as txt, its labels in the label fields
    name: st.fixed_dictionaries(
        {},
        optional={
            "txt": OWN_ANSWERS[name] | text,
            "reply": words_text,
            **dict.fromkeys(LABEL_FIELDS, st.sampled_from(task.labels or ("none",)) | st.sampled_from(LABELS)),
        },
    )
    for name, task in INSTALLED.tasks.items()
}


def allowed_errors(name: str) -> tuple[type[Exception], ...]:
    return (ValueError,) if INSTALLED.packages[name] == "osum" else TARGET_ERRORS


@FUZZ
@given(record=records, data=st.data())
def test_build_target_returns_a_target_or_raises_the_documented_error(record, data):
    for name, task in INSTALLED.tasks.items():
        for line in (record, data.draw(OWN_RECORDS[name], label=f"{name} line")):
            before = copy.deepcopy(line)
            for build in (task.build_target, task.target):  # the line as it is, then through the read-only view
                try:
                    target = build(line)
                except allowed_errors(name):
                    continue
                assert isinstance(target, Target), name
                assert all(isinstance(part, str) for part in (target.transcript, target.suffix, target.body)), name
            assert repr(line) == repr(before), name  # the task did not change the line (repr: NaN != NaN)


# A target per task to score the fuzzed answers against: the first of these lines it builds a valid one from.
REFERENCE_LINES = [
    {"txt": "", "extra": {"words": [["four", 0.1, 0.4], ["two", 0.5, 0.8]]}},
    {"txt": "what is two plus two<开始回答>four"},
    *({"txt": f"one two<{label}>"} for label in LABELS),
    {"txt": "one two<adult><female>"},
    {"txt": "", "age": "adult", "gender": "female"},
    {"txt": "one two"},
]


def reference(task: Task) -> Target | None:
    for line in REFERENCE_LINES:
        try:
            target = task.build_target(line)
        except TARGET_ERRORS:
            continue
        if task.parse_output(target.text).valid:
            return target
    return None


REFERENCES = {name: reference(task) for name, task in INSTALLED.tasks.items()}


def test_every_builtin_task_has_a_reference_to_score_against():
    assert [name for name, package in INSTALLED.packages.items() if package == "osum" and not REFERENCES[name]] == []


# Outputs every task parses first, before the generated ones: the empty and the undecoded, lone and
# piled-up angle brackets, times that are no times, invisible and look-alike characters, special tokens,
# a long answer.
EDGE_OUTPUTS = [
    "", " ", "\n\t ", "\ufffd", "\ufffd\ufffd\ufffd", "\x00", "\x1b[31m", "\ud800",
    "<", ">", "<>", "<<>>", "><", "<<<", ">>>", "<" * 500, "<a>" * 300 + "x", "<开始回答>", "<开始回答>" * 3,
    "<0.1>", "<0.1><0.2>", "<-1>a<2>", "<0.1>a<0.2><0.3>", "<0.1,0.2>", "a<0.1,>", "<NaN>a<inf>",
    "\u202e\u200b\ufeff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎉<laugh>", "Ａ<ｌａｕｇｈ>", "a\u0000<laugh>", "\udcff<male>", "\r\n<adult>\r\n",
    "<|im_end|>", "<|endoftext|><|endoftext|>", "one two" * 200,
]  # fmt: skip


def test_parse_output_returns_a_prediction_that_scoring_takes():
    scorer = Scorer(INSTALLED.tasks)  # one for all examples: every answer is scored, the metrics computed at the end
    valid = dict.fromkeys(INSTALLED.tasks, 0)

    def parsed(name: str, task: Task, answer: str) -> None:
        prediction = task.parse_output(answer)
        assert isinstance(prediction, Prediction) and prediction.text == answer, (name, answer)
        assert isinstance(prediction.transcript, str) and isinstance(prediction.valid, bool), (name, answer)
        assert prediction.label is None or isinstance(prediction.label, str), (name, answer)
        if prediction.valid:
            assert answer.strip() and not is_garbled(answer), (name, answer)
            valid[name] += 1
        if REFERENCES[name] is not None:
            scorer.add(name, "fuzz", answer, REFERENCES[name], prediction=prediction)

    @FUZZ
    @given(output=text, data=st.data())
    def parse(output, data):
        for name, task in INSTALLED.tasks.items():
            for answer in (output, data.draw(OWN_ANSWERS[name], label=f"{name} answer")):
                parsed(name, task, answer)

    for output in EDGE_OUTPUTS:
        for name, task in INSTALLED.tasks.items():
            parsed(name, task, output)
    parse()
    metrics = scorer.evaluation().metrics
    assert metrics and all(metrics[name]["count"] > 0 for name in metrics)
    assert all(valid.values()), valid  # the valid paths ran too
