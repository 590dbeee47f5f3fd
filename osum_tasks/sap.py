"""SAP: transcription plus the speaker's age group, OSUM tag ``<TRANSCRIBE> <AGE>``, target ``transcript<adult>``.

OSUM's final three classes; its earlier four (child, youth, middle_age, old) map youth and middle_age onto
adult, in references and in predictions. Demo data: a child's voice is the speech sped up by 1.25-1.4
(raising pitch and formants together, as a shorter vocal tract does) and higher-pitched; an old voice is
slow, low, with a narrow pitch range, a 4-6 Hz tremor and some breath noise; half the adult labels are
written in the old four-class form."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from osum_core.plugins import CorpusSpec, DemoRecipe, Rendered, Utterance, hookimpl, with_prosody
from osum_core.task import LabelField, Task, tagged_task

LABELS = ("child", "adult", "old")
FIELD = LabelField("age", LABELS, aliases={"youth": "adult", "middle_age": "adult", "middle": "adult"})

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "将这段音频进行转录，并在转录完成的文本末尾附加<年龄>标签。年龄类别分为三种：child、adult、old。",
        "请将音频转录为文本，并在文本结尾处标注<年龄>标签，年龄划分为child、adult和old三种。",
        "转录这段语音，并在文本最后加上说话人的<年龄>标签：child、adult或old。",
        "请写出音频中说的话，然后用<>标出说话人的年龄段（child、adult、old）。",
        "识别语音内容并判断说话人的年龄，在转写结果后添加<年龄>标签，可选child、adult和old。",
    ),
    "en": (
        "Transcribe the audio and end with the speaker's <age> tag: child, adult or old.",
        "Write down what is said, then the speaker's age group in angle brackets.",
        "Transcribe the speech and tag the speaker's age group at the end.",
        "What does the speaker say, and how old are they? Answer with the transcript followed by <age>.",
        "Convert the speech to text and append the age label: child, adult or old.",
    ),
}

# For tasks.sap.transcript=false (the age group alone, tag <AGE>); ours, in the style of OSUM's.
LABEL_PROMPTS = {
    "zh": (
        "请判断语音中发言者的年龄段，并在结果中标注<年龄>标签，年龄分为child、adult、old三种。",
        "说话人属于哪个年龄段？请只用<>给出年龄标签：child、adult或old。",
    ),
    "en": (
        "How old is the speaker? Answer with one <age> tag: child, adult or old.",
        "Name the speaker's age group in angle brackets, without transcribing.",
        "Tag the speaker's age group.",
    ),
}

TASK = tagged_task(name="sap", tag="<TRANSCRIBE> <AGE>", prompts=PROMPTS, label_prompts=LABEL_PROMPTS, fields=[FIELD])


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    age = rng.choice(LABELS)
    voice = utt.voice
    if age == "child":
        voice = with_prosody(voice, rng, 170, 80, 70)
    elif age == "old":
        voice = with_prosody(voice, rng, 115, 25, 15)
    raw = rng.choice(("youth", "middle_age")) if age == "adult" and rng.random() < 0.5 else age
    labels = {"age": raw, "_speedup": rng.uniform(1.25, 1.4), "_tremor": rng.uniform(4.0, 6.0)}
    return dataclasses.replace(utt, voice=voice, labels=labels)


def render(utt: Utterance, speech: np.ndarray, rng: np.random.Generator) -> Rendered:
    age = FIELD.canonical(utt.labels["age"])
    if age == "child":
        import torch  # imported by synthesis workers, not when osum lists tasks
        import torchaudio.functional

        # Read 16 kHz audio as if it had been recorded at 16 kHz * speedup: shorter, higher, brighter. The
        # rate is a multiple of 400 Hz: resampling cost grows with the ratio's reduced denominator.
        source_rate = round(16000 * utt.labels["_speedup"] / 400) * 400
        faster = torchaudio.functional.resample(torch.from_numpy(speech), source_rate, 16000).numpy()
        return Rendered(faster, stretch=16000 / source_rate)
    if age == "old":
        t = np.arange(len(speech)) / 16000
        tremor = 1.0 + 0.35 * np.sin(2 * np.pi * utt.labels["_tremor"] * t)
        breath = rng.normal(0, 0.01, len(speech)) * (np.abs(speech) > 0.01)
        return Rendered((speech * tremor + breath).astype(np.float32))
    return Rendered(speech)


def label_text(utt: Utterance) -> str:
    return f"<{utt.labels['age']}>"


RECIPE = DemoRecipe(draw, render, label_text)


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: RECIPE}
