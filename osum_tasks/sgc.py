"""SGC: transcription plus the speaker's gender, OSUM tag ``<TRANSCRIBE> <GENDER>``, target ``transcript<male>``.

Demo data: the gender of the eSpeak voice variant (m1-m7 male, f1-f5 female); dev and test use held-out
voices, so the model has to generalise over speakers."""

from __future__ import annotations

from osum_core.plugins import CorpusRecipe, DemoRecipe, Utterance, hookimpl
from osum_core.task import LabelField, Task, tagged_task
from osum_tasks.corpora import commonvoice

LABELS = ("female", "male")
FIELD = LabelField("gender", LABELS)

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "请将这段音频进行转录，并在文本末尾附加<性别>标签。性别分为两种：female，male。",
        "请将音频转录为文本，并在文本结尾处标注<性别>标签，性别为female或male。",
        "转录这段语音，并在文本最后加上说话人的<性别>标签：female或male。",
        "请写出音频中说的话，然后用<>标出说话人的性别（female，male）。",
        "识别语音内容并判断说话人性别，在转写结果后添加<性别>标签，可选female和male。",
    ),
    "en": (
        "Transcribe the audio and end with the speaker's <gender> tag: female or male.",
        "Write down what is said, then the speaker's gender in angle brackets.",
        "Transcribe the speech and tag the speaker's gender at the end.",
        "What does the speaker say, and is the speaker female or male? Answer with the transcript followed by <gender>.",
        "Convert the speech to text and append the gender label.",
    ),
}

# For tasks.sgc.transcript=false (the gender alone, tag <GENDER>): the first is the "only X" prompt of OSUM's
# internal demo; the others are ours in its style.
LABEL_PROMPTS = {
    "zh": (
        "请判断语音中发言者的性别，并在结果中标注<性别>标签，性别分为female和male。",
        "说话人是男性还是女性？请只用<>给出性别标签：female或male。",
    ),
    "en": (
        "Is the speaker female or male? Answer with one <gender> tag.",
        "Name the speaker's gender in angle brackets, without transcribing.",
        "Tag the speaker's gender.",
    ),
}

TASK = tagged_task(name="sgc", tag="<TRANSCRIBE> <GENDER>", prompts=PROMPTS, label_prompts=LABEL_PROMPTS, fields=[FIELD])


def label_text(utt: Utterance) -> str:
    return f"<{utt.gender}>"


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: DemoRecipe(label_text=label_text)}


@hookimpl
def osum_corpus_recipes() -> list[CorpusRecipe]:
    return [commonvoice.COMMONVOICE, commonvoice.KAGGLE_COMMONVOICE]  # SAP and ASR lines as well
