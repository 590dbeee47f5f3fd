"""VED: transcription plus a vocal-event tag, OSUM tag ``<TRANSCRIBE> <CAPTION>``, target ``transcript<laugh>``."""

from __future__ import annotations

from osum_core.plugins import hookimpl
from osum_core.task import Task, tagged_task

LABELS = ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other")

PROMPTS = {
    "zh": (
        "请将以下音频进行转录，并在结尾处给出<音频事件>标签，音频事件分为8类：laugh，cough，cry，screaming，sigh，"
        "throat clearing，sneeze，other。",
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

TASK = tagged_task(
    name="ved",
    tag="<TRANSCRIBE> <CAPTION>",
    labels=LABELS,
    prompts=PROMPTS,
    label_field="event",
)


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]
