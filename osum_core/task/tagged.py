"""`tagged_task`: builds an ASR+X task whose target is ``transcript<label>`` from a closed label set.

Most OSUM tasks (VED, SER, SSR, SGC, SAP) have exactly this shape; a plugin that adds another such task
needs only its name, tag, labels and prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from osum_core.task.contract import Prediction, Target, Task
from osum_core.task.metrics import LabelMetric
from osum_core.task.normalize import normalize_target
from osum_core.task.tags import split_suffix_tags


def tagged_task(
    name: str,
    tag: str,
    labels: Sequence[str],
    prompts: Mapping[str, Sequence[str]],
    label_field: str,
    map_label: Callable[[str], str] = lambda label: label,
    **weights: float,
) -> Task:
    """An ASR+X task with one label per example.

    The label comes from the trailing ``<label>`` of the manifest's ``txt`` (OSUM's own data stores it there)
    or, when ``txt`` has none, from the field `label_field`. `map_label` maps raw labels onto the label set
    (OSUM's 15->8 style classes, for example) before they are checked against `labels`."""
    label_set = tuple(labels)

    def build_target(example: Mapping[str, Any]) -> Target:
        transcript, tags = split_suffix_tags(str(example.get("txt", "")))
        raw = tags[0] if tags else example.get(label_field)
        if raw is None:
            raise ValueError(f"no <label> at the end of 'txt' and no '{label_field}' field")
        label = map_label(normalize_target(str(raw)).strip("<>"))
        if label not in label_set:
            raise ValueError(f"label {label!r} (field '{label_field}') is not one of {list(label_set)}")
        return Target(normalize_target(transcript), f"<{label}>")

    def parse_output(text: str) -> Prediction:
        transcript, tags = split_suffix_tags(text)
        return Prediction(text=text, transcript=transcript, label=tags[0].strip() if tags else None)

    return Task(
        name=name,
        tag=tag,
        prompts=prompts,
        labels=label_set,
        build_target=build_target,
        parse_output=parse_output,
        make_metric=lambda: LabelMetric(label_set),
        metric="accuracy",
        **weights,
    )
