"""SER: transcription plus an emotion tag, OSUM tag ``<TRANSCRIBE> <EMOTION>``, target ``transcript<happy>``.

Demo data: each emotion has its own prosody (speaking rate, pitch, pitch range) and, in a share
``content_cues`` of utterances (recipe option, ``data.demo.options.content_cues``), a cue word after the
digits ("great" for happy)."""

from __future__ import annotations

import dataclasses
import random

from osum_core.plugins import CorpusRecipe, CorpusSpec, DemoRecipe, Utterance, hookimpl, with_prosody
from osum_core.task import LabelField, Task, tagged_task
from osum_tasks.corpora import meld

LABELS = ("sad", "anger", "neutral", "happy", "surprise", "fear", "disgust", "other")

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "请将以下音频内容进行转录，并在结尾处给出<情感>标签，情感共分为8类：sad，anger，neutral，happy，surprise，"
        "fear，disgust，以及other。",
        "请将音频内容转录成文字记录，并在记录末尾标注<情感>标签，情感共8种：sad，anger，neutral，happy，surprise，"
        "fear，disgust，和other。",
        "转录这段语音，并在文本末尾附加说话人的<情感>标签：sad，anger，neutral，happy，surprise，fear，disgust，other。",
        "请写出音频中说的话，最后用<>给出情感类别，共8类：sad，anger，neutral，happy，surprise，fear，disgust，other。",
        "识别语音内容并判断说话人的情感，在转写结果后添加<情感>标签（sad，anger，neutral，happy，surprise，fear，"
        "disgust，other）。",
    ),
    "en": (
        "Transcribe the audio and end with an <emotion> tag: sad, anger, neutral, happy, surprise, fear, "
        "disgust or other.",
        "Write down what is said, then the speaker's emotion in angle brackets.",
        "Transcribe the speech and tag the emotion you hear at the end.",
        "What does the speaker say, and how do they feel? Answer with the transcript followed by <emotion>.",
        "Convert the speech to text and append the emotion label.",
    ),
}

# For tasks.ser.transcript=false (the emotion alone, tag <EMOTION>); ours, in the style of OSUM's.
LABEL_PROMPTS = {
    "zh": (
        "请判断以下音频中说话人的情感，并给出<情感>标签，情感共分为8类：sad，anger，neutral，happy，surprise，"
        "fear，disgust，以及other。",
        "请识别说话人的情感，只用<>给出情感类别：sad，anger，neutral，happy，surprise，fear，disgust，other。",
    ),
    "en": (
        "What emotion does the speaker express? Answer with one <emotion> tag: sad, anger, neutral, happy, "
        "surprise, fear, disgust or other.",
        "Name the speaker's emotion in angle brackets, without transcribing.",
        "Tag the emotion you hear.",
    ),
}

TASK = tagged_task(
    name="ser",
    tag="<TRANSCRIBE> <EMOTION>",
    prompts=PROMPTS,
    label_prompts=LABEL_PROMPTS,
    fields=[LabelField("emotion", LABELS)],
)

# label: (rate wpm, pitch 0-100, pitch range 0-100, cue word)
PROSODY = {
    "sad": (110, 25, 10, "sorry"),
    "anger": (215, 45, 80, "stop"),
    "neutral": (165, 50, 40, "okay"),
    "happy": (195, 72, 95, "great"),
    "surprise": (160, 90, 100, "wow"),
    "fear": (240, 80, 20, "help"),
    "disgust": (125, 35, 65, "yuck"),
    "other": (150, 55, 0, "hmm"),
}


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    label = rng.choice(LABELS)
    rate, pitch, pitch_range, cue = PROSODY[label]
    voice = with_prosody(utt.voice, rng, rate, pitch, pitch_range)
    words = utt.words + (cue,) if rng.random() < spec.options["content_cues"] else utt.words
    return dataclasses.replace(utt, words=words, voice=voice, labels={"emotion": label})


def label_text(utt: Utterance) -> str:
    return f"<{utt.labels['emotion']}>"


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    # content_cues: share of utterances that also say their class's cue word (0: prosody alone).
    return {TASK.tag: DemoRecipe(draw=draw, label_text=label_text, options={"content_cues": 1.0})}


@hookimpl
def osum_corpus_recipes() -> list[CorpusRecipe]:
    return [meld.RECIPE]
