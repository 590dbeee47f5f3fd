"""OSUM's multi-label combinations of age and gender, composed from SAP and SGC without copying them:
``<TRANSCRIBE> <AGE> <GENDER>`` (target ``transcript<adult><female>``, task ``asr_age_gender``) and
``<AGE> <GENDER>`` (no transcript: ``<adult><female>``, task ``age_gender``).

Any combination of `LabelField`s works the same way; a multi-label task reports each field's accuracy
(``age_accuracy``) and ``accuracy``, the share of examples with every label right."""

from __future__ import annotations

from osum_core.plugins import DemoRecipe, Utterance, hookimpl
from osum_core.task import Task, tagged_task
from osum_tasks import sap, sgc

PROMPTS_WITH_TRANSCRIPT = {
    "zh": (
        # OSUM's prompt_config.yaml; the others are ours in its style.
        "请将这段音频进行转录，并在转录完成的文本末尾附加<年龄> <性别>标签。年龄分为child、adult、old三种，性别为female或male。",
        "转录这段语音，并在文本最后依次加上说话人的<年龄>和<性别>标签。年龄：child、adult、old；性别：female、male。",
    ),
    "en": (
        "Transcribe the audio and end with the speaker's <age> and <gender> tags (child, adult or old; female or male).",
        "Write down what is said, then the speaker's age group and gender, each in angle brackets.",
    ),
}

PROMPTS_LABELS_ONLY = {
    "zh": (
        # OSUM's prompt_config.yaml (its stray "d" in "以下" dropped); the other is ours in its style.
        "请识别以下音频发言者的年龄和性别。年龄分为child、adult、old三种，性别为male和female。",
        "请判断说话人的年龄段和性别，依次给出<年龄>和<性别>标签。",
    ),
    "en": (
        "Give the speaker's <age> and <gender> tags: child, adult or old; female or male.",
        "How old is the speaker, and what gender? Answer with two tags in angle brackets.",
    ),
}

ASR_AGE_GENDER = tagged_task(
    name="asr_age_gender", tag="<TRANSCRIBE> <AGE> <GENDER>", prompts=PROMPTS_WITH_TRANSCRIPT, fields=[sap.FIELD, sgc.FIELD]
)
AGE_GENDER = tagged_task(
    name="age_gender", tag="<AGE> <GENDER>", prompts=PROMPTS_LABELS_ONLY, fields=[sap.FIELD, sgc.FIELD], transcribe=False
)


def label_text(utt: Utterance) -> str:
    return sap.label_text(utt) + sgc.label_text(utt)


@hookimpl
def osum_tasks() -> list[Task]:
    return [ASR_AGE_GENDER, AGE_GENDER]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    recipe = DemoRecipe(sap.draw, sap.render, label_text)
    return {ASR_AGE_GENDER.tag: recipe, AGE_GENDER.tag: recipe}
