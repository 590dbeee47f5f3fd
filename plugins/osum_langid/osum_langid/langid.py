"""LANGID: transcription plus the spoken language, OSUM-style tag ``<TRANSCRIBE> <LANGID>``, target ``3 4 0 7<de>``.

A third-party task written against osum's public API alone (`osum_core.plugins`, `osum_core.task`).
Demo data: the planned digit string is written as numerals, which read the same in every language, and spoken
by the eSpeak NG voice of a randomly drawn language: only the sound tells the languages apart. The label is
the language code."""

from __future__ import annotations

import dataclasses
import random

from osum_core.plugins import CorpusRecipe, CorpusSpec, DemoRecipe, Utterance, hookimpl
from osum_core.task import LabelField, Task, tagged_task

from osum_langid import corpora

# Language code -> the eSpeak NG voice that speaks it; the variant (speaker) files work with any of them.
VOICES = {"en": "en-us", "de": "de", "es": "es", "fr": "fr", "it": "it"}
LABELS = tuple(VOICES)
FIELD = LabelField("language", LABELS)

NUMERALS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip

PROMPTS = {
    "zh": (
        # In the style of OSUM's prompt_config.yaml.
        "请将这段音频进行转录，并在文本末尾附加<语种>标签，语种分为：en、de、es、fr、it。",
        "请将音频转录为文本，并在文本结尾处标注说话所用语言的<语种>标签，可选en、de、es、fr和it。",
        "转录这段语音，并在文本最后加上<语种>标签：en、de、es、fr或it。",
    ),
    "en": (
        "Transcribe the audio and end with a <language> tag: en, de, es, fr or it.",
        "Write down what is said, then the code of the spoken language in angle brackets.",
        "Transcribe the speech and tag the language it is spoken in at the end.",
        "What does the speaker say, and in which language? Answer with the transcript followed by <language>.",
        "Convert the speech to text and append the language label: en, de, es, fr or it.",
    ),
}

TASK = tagged_task(name="langid", tag="<TRANSCRIBE> <LANGID>", prompts=PROMPTS, fields=[FIELD])


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    language = rng.choice(LABELS)
    return dataclasses.replace(
        utt,
        words=tuple(NUMERALS[word] for word in utt.words),
        voice=dataclasses.replace(utt.voice, name=VOICES[language]),
        labels={"language": language},
    )


def label_text(utt: Utterance) -> str:
    return f"<{utt.labels['language']}>"


RECIPE = DemoRecipe(draw=draw, label_text=label_text)


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: RECIPE}


@hookimpl
def osum_corpus_recipes() -> list[CorpusRecipe]:
    return [corpora.recipe(LABELS)]
