"""The `Task` record: everything one task contributes to training, evaluation and prediction.

A task is mostly data (tag, prompts, labels, weights) plus three small functions: how an example becomes a
training target, how generated text becomes a prediction, and which metric scores it. The built-in tasks in
`osum_tasks` and third-party plugins build `Task` objects the same way (see PLUGINS.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TAG = re.compile(r"^(<[A-Za-z0-9_]+>)( <[A-Za-z0-9_]+>)*$")
PROMPT_LANGUAGES = ("zh", "en")
WEIGHTS = ("loss_weight", "label_loss_weight", "sampling_weight", "ctc_loss_weight")  # `Task`'s float settings


@dataclass(frozen=True)
class Target:
    """A training target in OSUM's ASR+X form: the transcript, then a suffix (``<laugh>``), no space between.

    transcript: the words alone; scored by WER and learnt by the CTC head.
    suffix: the task's "X" (label tags, ``<开始回答>reply``); its tokens get the task's label_loss_weight.
    body: what the model writes before the suffix when that is not the bare transcript (SRWT's
        timestamped words); empty means the transcript.
    transcribed: False when the model writes the suffix alone (X without ASR: ``<laugh>``); the transcript
        is then only the CTC head's target (if the task's ctc_loss_weight is not 0) and is not scored.
    heard_suffix: whether the suffix says something about the sound itself (an event, an emotion, a speaker's
        gender); with ``loss.ctc_target: target`` the CTC head then learns it after the transcript. False
        for a suffix the audio does not contain (STTC's reply): the CTC head learns the transcript alone."""

    transcript: str
    suffix: str = ""
    body: str = ""
    transcribed: bool = True
    heard_suffix: bool = True

    @property
    def text(self) -> str:
        """What the LLM learns to write."""
        return (self.body or self.transcript if self.transcribed else "") + self.suffix


@dataclass(frozen=True)
class Prediction:
    """Generated text parsed by a task. `label` is None when the task has none or the output held none.

    valid: False when the text is not in the task's output format: empty, a missing, extra or unknown tag,
        malformed timestamps, text after the last tag, characters that did not decode. `label` and `fields`
        still hold what could be read, and `transcript` the words that could be recovered (scored by WER as
        they are); metrics count an invalid answer's label, fields and reply as wrong."""

    text: str
    transcript: str
    label: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    valid: bool = True


class TaskMetric(Protocol):
    """What `Task.make_metric()` returns: accumulates over batches, then reports numbers. It may also have
    ``confusion_matrices() -> {name: {"labels": [...], "counts": [[...]]}}`` (osum writes them to the run's
    confusion.json); `LabelMetric` and `FieldsMetric` do."""

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None: ...

    def compute(self) -> dict[str, float]: ...


# What `build_target` may raise for a manifest line it cannot use: ValueError is the one to raise (naming the
# field); KeyError and TypeError (a missing field, one of the wrong type) are taken as the same. osum reports
# them with the line's file:line; anything else is a bug in the task and propagates.
TARGET_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError)


class RecordView(Mapping[str, Any]):
    """A read-only view of a manifest line, what a task's `select` and `build_target` receive: a task can
    read every field but change none, so no task alters what the next one (or osum) reads. Nested objects
    are read-only too: mappings as `RecordView`, lists as tuples. Making one costs nothing; nested values are
    wrapped when read."""

    __slots__ = ("_record",)

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = record

    def __getitem__(self, key: str) -> Any:
        return read_only(self._record[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)

    def __repr__(self) -> str:
        return f"RecordView({self._record!r})"


def read_only(value: Any) -> Any:
    """`value` as a task may see it: mappings as `RecordView`, lists and tuples as tuples of read-only values,
    sets as frozensets; anything else (str, numbers, None) as it is."""
    if isinstance(value, RecordView):
        return value
    if isinstance(value, Mapping):
        return RecordView(value)
    if isinstance(value, list | tuple):
        return tuple(read_only(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    return value


def normalize_task_tag(tag: str) -> str:
    """A task tag in the one spelling osum compares (a manifest line's ``task`` with a task's `tag`):
    whitespace around and between the ``<...>`` parts is optional, any amount of it is one space
    (``<TRANSCRIBE><EMOTION>``, as OSUM's inference script takes it, is ``<TRANSCRIBE> <EMOTION>``, as its
    data writes it). Case counts, as in OSUM's prompt file where the tag is a key: a tag that differs only in
    case is another tag (`tag_hint` points to the right one)."""
    return re.sub(r">\s*<", "> <", tag.strip())


def tag_hint(given: str, tasks: Sequence[Task]) -> str:
    """For a manifest ``task`` value that no task takes, which of `tasks`' tags was likely meant, as
    ``did you mean '<TRANSCRIBE> <GENDER>' (task sgc)?`` and why when it is not a typo: the tag of a task
    named that way (``sgc``), the tag that differs only in case, or the closest tag; empty when none is
    close."""
    spelled = normalize_task_tag(given)
    by_folded_tag = {task.tag.casefold(): task for task in tasks}
    named = {task.name: task for task in tasks}.get(spelled.casefold().strip("<>"))
    if named is not None:
        task, why = named, " the task field holds a task's tag, not its name"
    elif spelled.casefold() in by_folded_tag:
        task, why = by_folded_tag[spelled.casefold()], " tags are case-sensitive"
    else:
        close = difflib.get_close_matches(spelled.casefold(), list(by_folded_tag), n=1, cutoff=0.8)
        if not close:
            return ""
        task, why = by_folded_tag[close[0]], ""
    return f"did you mean {task.tag!r} (task {task.name})?{why}"


@dataclass(frozen=True)
class Task:
    """One task, as a plugin contributes it.

    name: lowercase identifier used on the command line and in metrics.json (``asr``).
    tag: OSUM's task tag, the value of a manifest line's ``task`` field (``<TRANSCRIBE> <CAPTION>``).
    prompts: prompt paraphrases by language code (``{"zh": (...), "en": (...)}``); one is drawn per training
        example, the first is used at evaluation.
    build_target: example (a manifest line, as a read-only `RecordView`) -> `Target`; on a line it cannot use,
        raise ValueError naming the field (KeyError and TypeError are taken as the same: `TARGET_ERRORS`).
    parse_output: generated text -> `Prediction`; must never raise: text not in the task's format gives a
        prediction with ``valid=False``.
    make_metric: returns a new `TaskMetric` on every call (osum refuses a metric object another task uses).
    metric: the headline metric's name as it appears in metrics.json (``wer``, ``accuracy``).
    labels: the closed label set, empty for open-ended tasks.
    loss_weight: multiplies every target token's loss of this task's examples.
    label_loss_weight: extra factor for the suffix tokens (the "X" of ASR+X), on top of loss_weight.
    sampling_weight: relative share of this task in the training mixture.
    select: which examples belong to the task; by default those whose ``task`` field equals `tag`.
    options: the task's own settings and their defaults (SRWT's timestamp format); users set them as
        ``tasks.<name>.<option>=value``.
    configure: called with the user's option values (a subset of `options`), returns the configured task;
        needed only when `options` is not empty.
    ctc_loss_weight: multiplies the CTC loss of this task's examples (with a CTC head, ``loss.ctc_weight``);
        0: the encoder's CTC head does not learn from them.
    """

    name: str
    tag: str
    prompts: Mapping[str, Sequence[str]]
    build_target: Callable[[Mapping[str, Any]], Target]
    parse_output: Callable[[str], Prediction]
    make_metric: Callable[[], TaskMetric]
    metric: str
    labels: tuple[str, ...] = ()
    loss_weight: float = 1.0
    label_loss_weight: float = 1.0
    sampling_weight: float = 1.0
    select: Callable[[Mapping[str, Any]], bool] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    configure: Callable[..., Task] | None = None
    ctc_loss_weight: float = 1.0  # last: a record built positionally before it existed keeps its meaning

    def __post_init__(self) -> None:
        problems = contract_problems(self)
        if problems:
            raise ValueError(f"task {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "tag", normalize_task_tag(self.tag))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "prompts", {k: tuple(v) for k, v in self.prompts.items()})

    def selects(self, example: Mapping[str, Any]) -> bool:
        """Whether `example` belongs to the task; a custom `select` gets a read-only view of it."""
        if self.select is not None:
            return bool(self.select(read_only(example)))
        # OSUM treats a line without a task field as plain transcription.
        return normalize_task_tag(str(example.get("task", "<TRANSCRIBE>"))) == self.tag

    def target(self, example: Mapping[str, Any]) -> Target:
        """The training target of a manifest line: `build_target` given a read-only view of it, so that the
        task cannot change the line for osum or another task. Raises what `build_target` raises."""
        return self.build_target(read_only(example))

    def prompt_bank(self, language: str) -> tuple[str, ...]:
        """Prompts for ``zh``, ``en`` or ``both``. A task without prompts in `language` uses the banks it has,
        with a UserWarning naming the task and both languages (once per task and language)."""
        if language == "both":
            bank = tuple(p for lang in PROMPT_LANGUAGES for p in self.prompts.get(lang, ()))
        else:
            bank = tuple(self.prompts.get(language, ()))
        if bank:
            return bank
        used = [lang for lang, prompts in self.prompts.items() if prompts]
        warn_prompt_fallback(self.name, language, used)
        return tuple(p for lang in used for p in self.prompts[lang])

    def with_weights(self, **weights: float) -> Task:
        """A copy with loss/sampling weights replaced (config overrides)."""
        changes: dict[str, Any] = dict(weights)  # replace() is typed per field; these are the float ones
        return dataclasses.replace(self, **changes)

    def with_options(self, **options: Any) -> Task:
        """The task configured with `options` (``tasks.<name>.<option>`` in the config); unknown names raise."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"task {self.name!r} has no option {unknown[0]!r} (its options: {known})")
        if not options:
            return self
        configured = self.configure(**options)  # type: ignore[misc]  # the contract: set when options exist
        # Options and weights are separate settings: the weights this task carries (its own, or a config's
        # applied before) stay whatever `configure` rebuilt the task from.
        weights = {name: getattr(self, name) for name in WEIGHTS}
        return dataclasses.replace(configured, options={**self.options, **options}, **weights)


_WARNED_FALLBACKS: set[tuple[str, str]] = set()  # (task, language) pairs already warned about


def warn_prompt_fallback(task: str, language: str, used: Sequence[str]) -> None:
    """Say, once per task and language, that a task prompts in another language than the one asked for: the
    model would otherwise silently learn (and be evaluated on) prompts the user did not choose."""
    if (task, language) in _WARNED_FALLBACKS:
        return
    _WARNED_FALLBACKS.add((task, language))
    asked = "zh or en" if language == "both" else repr(language)
    warnings.warn(
        f"task {task!r} has no {asked} prompts (data.prompt_language={language}); "
        f"using its {' and '.join(repr(lang) for lang in used)} prompts instead",
        UserWarning,
        stacklevel=3,  # the caller of Task.prompt_bank
    )


def contract_problems(task: Task) -> list[str]:
    """Every way `task` breaks the contract, as readable sentences (empty when it is fine)."""
    problems = []
    if not isinstance(task.name, str) or not _NAME.match(task.name):
        problems.append(f"name must be a lowercase identifier, got {task.name!r}")
    if not isinstance(task.tag, str) or not _TAG.match(normalize_task_tag(task.tag)):
        problems.append(f"tag must look like '<TRANSCRIBE> <CAPTION>', got {task.tag!r}")
    if not task.prompts or not any(task.prompts.values()):
        problems.append("needs at least one prompt")
    elif any(not isinstance(p, str) or not p.strip() for bank in task.prompts.values() for p in bank):
        problems.append("prompts must be non-empty strings")
    for attr in ("build_target", "parse_output", "make_metric"):
        if not callable(getattr(task, attr)):
            problems.append(f"{attr} must be callable")
    if task.options and not callable(task.configure):
        problems.append("a task with options needs a configure function")
    if not isinstance(task.metric, str) or not task.metric:
        problems.append("metric must name the headline metric")
    labels = list(task.labels)
    if any(not isinstance(label, str) or not label or "<" in label or ">" in label for label in labels):
        problems.append(f"labels must be non-empty strings without '<' or '>', got {labels!r}")
    elif len(set(labels)) != len(labels):
        problems.append(f"labels repeat: {sorted(label for label in set(labels) if labels.count(label) > 1)}")
    for attr in WEIGHTS:
        value = getattr(task, attr)
        if not isinstance(value, int | float) or value < 0:
            problems.append(f"{attr} must be a number >= 0, got {value!r}")
    return problems
