"""STTC: transcribe, then reply, OSUM tag ``<TRANSCRIBE> <S2TCHAT>``, target ``transcript<开始回答>reply``.

Manifests carry the reply in ``txt`` after ``<开始回答>`` (OSUM's form) or in a ``reply`` field. Metric:
the transcript's WER/CER, ``reply_exact`` (the share of replies equal to the reference after scoring
normalisation) and ``reply_chrf`` (torchmetrics' chrF, a character n-gram overlap that gives partial
credit). Demo data: spoken sums ("what is three plus four") whose reply is the answer ("seven")."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from osum_core.plugins import CorpusSpec, DemoRecipe, Utterance, hookimpl
from osum_core.task import (
    Prediction,
    Target,
    Task,
    is_garbled,
    normalize_pair,
    normalize_target,
    strip_tags,
)

ANSWER = "<开始回答>"

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml (its Gradio demo uses the same); the last four are ours in its style.
        "首先将语音转录为文字，然后对语音内容进行回复，转录和文字之间使用<开始回答>分割。",
        "请先转写这段语音，再对其内容作出回答，转写与回答之间用<开始回答>隔开。",
        "先写出音频中说的话，然后回应说话人，两部分之间插入<开始回答>。",
        "请识别语音内容并进行回复，格式为：转录文本<开始回答>回复内容。",
        "转录音频并回答其中的问题，用<开始回答>分隔转录和回答。",
    ),
    "en": (
        "Transcribe the speech, then reply to it; separate the two with <开始回答>.",
        "Write down what is said, then answer it after <开始回答>.",
        "First the transcript, then <开始回答>, then your reply.",
        "Transcribe the question and answer it, separated by <开始回答>.",
        "What is said, and what do you answer? Write the transcript, <开始回答> and the answer.",
    ),
}


def build_target(example: Mapping[str, Any]) -> Target:
    text = str(example.get("txt", ""))
    if ANSWER in text:
        transcript, reply = text.split(ANSWER, 1)
    elif example.get("reply") is not None:
        transcript, reply = text, str(example["reply"])
    else:
        raise ValueError(f"'txt' has no {ANSWER} and there is no 'reply' field")
    reply = normalize_target(reply)
    if not reply:
        raise ValueError("the reply is empty")
    if ANSWER in reply:
        raise ValueError(f"the reply holds another {ANSWER}")
    # The reply is not in the audio: a CTC head (loss.ctc_target: target) learns the question alone.
    return Target(normalize_target(transcript), ANSWER + reply, heard_suffix=False)


def parse_output(text: str) -> Prediction:
    """Valid: a transcript without tags, one <开始回答>, a reply, no undecodable characters. An invalid answer's
    transcript is its words without any tags; its reply counts as wrong."""
    transcript, marker, reply = text.partition(ANSWER)
    transcript, reply = transcript.strip(), reply.strip()
    tagged = "<" in transcript or ">" in transcript
    valid = bool(marker) and bool(reply) and ANSWER not in reply and not tagged and not is_garbled(text)
    return Prediction(
        text=text, transcript=strip_tags(transcript) if tagged else transcript, fields={"reply": reply}, valid=valid
    )


class ReplyMetric:
    """Transcript WER/CER plus reply exact match (an invalid answer's reply is never right) and chrF (of the
    reply as read)."""

    def __init__(self) -> None:
        # torch and torchmetrics: imported when a run scores, not when osum lists tasks.
        from torchmetrics.aggregation import MeanMetric
        from torchmetrics.text import CHRFScore

        from osum_core.task import TranscriptMetric

        self.transcript = TranscriptMetric()
        self.exact = MeanMetric()
        self.chrf = CHRFScore()

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        self.transcript.update(predictions, targets)
        # Each reply and its reference normalised alike (a code-switched pair: one normaliser for both).
        pairs = [normalize_pair(p.fields.get("reply", ""), t.suffix.removeprefix(ANSWER))
                 for p, t in zip(predictions, targets, strict=True)]
        replies, references = [reply for reply, _ in pairs], [reference for _, reference in pairs]
        for prediction, reply, reference in zip(predictions, replies, references, strict=True):
            self.exact.update(float(prediction.valid and reply == reference))
        self.chrf.update(replies, [[r] for r in references])

    def compute(self) -> dict[str, float]:
        scores = self.transcript.compute()
        if not scores:
            return {}
        return {"reply_exact": float(self.exact.compute()), "reply_chrf": float(self.chrf.compute()), **scores}


TASK = Task(
    name="sttc",
    tag="<TRANSCRIBE> <S2TCHAT>",
    prompts=PROMPTS,
    build_target=build_target,
    parse_output=parse_output,
    make_metric=ReplyMetric,
    metric="reply_exact",
)

NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen"
).split()


def draw(utt: Utterance, rng: random.Random, spec: CorpusSpec) -> Utterance:
    a, b = rng.randrange(10), rng.randrange(10)
    words = ("what", "is", NUMBERS[a], "plus", NUMBERS[b])
    return dataclasses.replace(utt, words=words, labels={"reply": NUMBERS[a + b]})


def label_text(utt: Utterance) -> str:
    return ANSWER + utt.labels["reply"]


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: DemoRecipe(draw=draw, label_text=label_text)}
