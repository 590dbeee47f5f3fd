"""`tagged_task`: builds a task whose target is ``transcript<label>...`` from closed label sets.

Most OSUM tasks (VED, SER, SSR, SGC, SAP) have exactly this shape with one label; OSUM's multi-label
combinations (``<TRANSCRIBE> <AGE> <GENDER>``, ``<AGE> <GENDER>``) are the same with several `LabelField`s,
and without the transcript when ``transcribe=False``. A plugin that adds another such task needs only its
name, tag, label fields and prompts (and prompts for the labels alone, to offer ``transcript: false``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from osum_core.task.contract import Prediction, Target, Task, TaskMetric, normalize_task_tag
from osum_core.task.normalize import normalize_target
from osum_core.task.tags import is_garbled, split_suffix_tags, strip_tags


@dataclass(frozen=True)
class LabelField:
    """One label of an example.

    name: the manifest field that holds the label when ``txt`` carries no tag (``event``, ``age``), also
        read from the line's ``extra`` object; in metrics it prefixes the per-field scores.
    labels: the closed label set.
    aliases: raw label -> label, applied to references and to predictions (OSUM's 15 style classes onto 8,
        its old age classes onto three)."""

    name: str
    labels: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def canonical(self, raw: Any) -> str:
        label = normalize_target(str(raw)).strip("<>").strip()
        return self.aliases.get(label, label)

    def hint(self, label: str) -> str:
        """``; did you mean 'anger'?`` for a label outside the set close to one in it (or to a raw label the
        aliases take, ``midle_age``); empty when none is close."""
        close = difflib.get_close_matches(label, [*self.labels, *self.aliases], n=1)
        return f"; did you mean {close[0]!r}?" if close else ""


def tagged_task(
    name: str,
    tag: str,
    prompts: Mapping[str, Sequence[str]],
    fields: Sequence[LabelField],
    transcribe: bool = True,
    label_prompts: Mapping[str, Sequence[str]] | None = None,
    **weights: float,
) -> Task:
    """A task whose target is the transcript (when `transcribe`) followed by one ``<label>`` per field.

    Without `transcribe` the model writes the labels alone (``<adult><female>``); a line's transcript, if it
    has one, is then only the CTC head's target. `label_prompts` (prompts that ask for the labels alone)
    give an ASR+X task the option ``transcript`` (default true): ``tasks.<name>.transcript=false`` turns it
    into X without ASR, as OSUM's ``<AGE> <GENDER>`` is: tag without ``<TRANSCRIBE>`` (``<CAPTION>``),
    `label_prompts`, the labels alone as the LLM's target, and the same manifest lines as before (those of
    either tag), so that both forms can be compared on one corpus."""
    fields = tuple(fields)
    if not fields:
        raise ValueError(f"task {name!r}: a tagged task needs at least one LabelField")
    tag = normalize_task_tag(tag)  # `<TRANSCRIBE><KEYWORD>` is `<TRANSCRIBE> <KEYWORD>`
    label_tag = " ".join(part for part in tag.split() if part != "<TRANSCRIBE>")
    offers_option = transcribe and label_prompts is not None and label_tag != tag

    if not offers_option:
        return build_tagged_task(name, tag, prompts, fields, transcribe, (), weights)

    def configure(transcript: Any = True) -> Task:
        if not isinstance(transcript, bool):
            raise ValueError(f"transcript must be true or false, got {transcript!r}")
        if transcript:
            task = build_tagged_task(name, tag, prompts, fields, True, (), weights)
        else:
            assert label_prompts is not None  # offers_option
            task = build_tagged_task(name, label_tag, label_prompts, fields, False, (tag,), weights)
        return dataclasses.replace(task, options={"transcript": True}, configure=configure)

    return configure(True)


def build_tagged_task(
    name: str,
    tag: str,
    prompts: Mapping[str, Sequence[str]],
    fields: tuple[LabelField, ...],
    transcribe: bool,
    also_reads: tuple[str, ...],
    weights: Mapping[str, float],
) -> Task:
    """`tagged_task`'s task in one form; `also_reads`: tags of other manifest lines it takes besides its own."""
    reads = {normalize_task_tag(t) for t in (tag, *also_reads)}

    def select(example: Mapping[str, Any]) -> bool:
        return normalize_task_tag(str(example.get("task", "<TRANSCRIBE>"))) in reads

    def build_target(example: Mapping[str, Any]) -> Target:
        transcript, tags = split_suffix_tags(str(example.get("txt", "")))
        if tags and len(tags) != len(fields):
            raise ValueError(f"'txt' ends in {len(tags)} tag(s) but the task has {len(fields)} label(s)")
        given = example.get("extra")
        extra: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        suffix = ""
        for index, label_field in enumerate(fields):
            raw = tags[index] if tags else example.get(label_field.name, extra.get(label_field.name))
            if raw is None:
                raise ValueError(f"no <label> at the end of 'txt' and no '{label_field.name}' field")
            label = label_field.canonical(raw)
            if label not in label_field.labels:
                raise ValueError(
                    f"label {label!r} (field '{label_field.name}') is not one of {list(label_field.labels)}"
                    + label_field.hint(label)
                )
            suffix += f"<{label}>"
        return Target(normalize_target(transcript), suffix, transcribed=transcribe)

    def parse_output(text: str) -> Prediction:
        """The first tag per field, read from the tags at the end. Valid when there is exactly one tag per
        field, each in its label set, nothing after them, nothing before them without `transcribe`, and no
        undecodable characters; an invalid answer's transcript is its words without any tags."""
        transcript, tags = split_suffix_tags(text)
        found = {f.name: f.canonical(tags[i]) for i, f in enumerate(fields) if i < len(tags)}
        valid = (
            len(tags) == len(fields)
            and all(found[f.name] in f.labels for f in fields)
            and (transcribe or not transcript)
            and not is_garbled(text)
        )
        return Prediction(
            text=text,
            transcript=("" if not transcribe else transcript if valid else strip_tags(transcript)),
            label=found.get(fields[0].name),
            fields=found,
            valid=valid,
        )

    labels = tuple(label for f in fields for label in f.labels)

    def make_metric() -> TaskMetric:
        from osum_core.task.metrics import FieldsMetric, LabelMetric  # torch: when a run scores, not at load

        if len(fields) == 1:
            return LabelMetric(fields[0].labels)
        return FieldsMetric({f.name: f.labels for f in fields})

    task = Task(
        name=name,
        tag=tag,
        prompts=prompts,
        labels=labels,
        build_target=build_target,
        parse_output=parse_output,
        make_metric=make_metric,
        metric="accuracy",
        select=select if also_reads else None,
    )
    return task.with_weights(**weights) if weights else task
