"""VED: transcription plus a vocal-event tag, OSUM tag ``<TRANSCRIBE> <CAPTION>``, target ``transcript<laugh>``.

Demo data: a procedural vocal event (osum_tasks/vocal_events.py) before the speech, after it, or mixed into
it (recipe option ``event_positions``: ``data.demo.options.event_positions=[before,after,over]``)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from osum_core.plugins import CorpusRecipe, CorpusSpec, DemoRecipe, Rendered, Utterance, hookimpl
from osum_core.task import LabelField, Task, tagged_task
from osum_tasks.corpora import esc50, vocalsound
from osum_tasks.vocal_events import make_event

LABELS = ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other")

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "请将以下音频进行转录，并在结尾处给出<音频事件>标签，音频事件分为8类：laugh，cough，cry，screaming，sigh，"
        "throat clearing，sneeze，other。",
        "请将音频转录为文字记录，并在记录末尾标注<音频事件>标签，音频事件共8种：laugh，cough，cry，screaming，sigh，"
        "throat clearing，sneeze，other。",
        "转录这段音频，并在文本最后加上<音频事件>标签，可选laugh，cough，cry，screaming，sigh，throat clearing，"
        "sneeze，other。",
        "请写出音频中的语音内容，然后在末尾用<>标出其中的音频事件：laugh，cough，cry，screaming，sigh，"
        "throat clearing，sneeze或other。",
        "识别语音并转写为文字，结尾附上音频事件标签（laugh，cough，cry，screaming，sigh，throat clearing，"
        "sneeze，other）。",
    ),
    "en": (
        "Transcribe the audio and end with a <vocal event> tag: laugh, cough, cry, screaming, sigh, "
        "throat clearing, sneeze or other.",
        "Write down the speech, then name the vocal event in angle brackets.",
        "Transcribe the speech and tag the vocal event you hear at the end.",
        "What is said, and which vocal event occurs? Answer with the transcript followed by <event>.",
        "Convert the speech to text and append the vocal event label.",
    ),
}

# For tasks.ved.transcript=false (the event alone, tag <CAPTION>); ours, in the style of OSUM's.
LABEL_PROMPTS = {
    "zh": (
        "请判断以下音频中的音频事件，并给出<音频事件>标签，音频事件分为8类：laugh，cough，cry，screaming，sigh，"
        "throat clearing，sneeze，other。",
        "这段音频中出现了哪种音频事件？请只用<>给出标签：laugh，cough，cry，screaming，sigh，throat clearing，"
        "sneeze或other。",
    ),
    "en": (
        "Which vocal event occurs in the audio? Answer with one <vocal event> tag: laugh, cough, cry, screaming, "
        "sigh, throat clearing, sneeze or other.",
        "Name the vocal event you hear, in angle brackets, without transcribing.",
        "Tag the vocal event in this audio.",
    ),
}

TASK = tagged_task(
    name="ved",
    tag="<TRANSCRIBE> <CAPTION>",
    prompts=PROMPTS,
    label_prompts=LABEL_PROMPTS,
    fields=[LabelField("event", LABELS)],
)


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    labels = {"event": rng.choice(LABELS), "_position": rng.choice(list(spec.options["event_positions"]))}
    return dataclasses.replace(utt, labels=labels)


def render(utt: Utterance, speech: np.ndarray, rng: np.random.Generator) -> Rendered:
    """The event before the speech, after it (each with a short gap), or over it (mixed in)."""
    sound = make_event(utt.labels["event"], rng, 16000) * rng.uniform(0.5, 1.0)
    gap = np.zeros(int(rng.uniform(0.1, 0.3) * 16000), dtype=np.float32)
    position = utt.labels["_position"]
    if position == "before":
        return Rendered(np.concatenate([sound, gap, speech]), offset=(len(sound) + len(gap)) / 16000)
    if position == "over":
        mixed = np.concatenate([speech, np.zeros(max(len(sound) - len(speech), 0), dtype=np.float32)])
        start = int(rng.integers(0, len(mixed) - len(sound) + 1))
        mixed[start : start + len(sound)] += sound
        return Rendered(mixed)
    return Rendered(np.concatenate([speech, gap, sound]))


def label_text(utt: Utterance) -> str:
    return f"<{utt.labels['event']}>"


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    # event_positions: where the vocal event goes: before or after the speech (with a gap), or over it.
    return {TASK.tag: DemoRecipe(draw, render, label_text, options={"event_positions": ["after"]})}


@hookimpl
def osum_corpus_recipes() -> list[CorpusRecipe]:
    return [esc50.RECIPE, vocalsound.RECIPE]
