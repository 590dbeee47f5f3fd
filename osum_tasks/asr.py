"""ASR: plain transcription, OSUM tag ``<TRANSCRIBE>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from osum_core.plugins import CorpusRecipe, DemoRecipe, hookimpl
from osum_core.task import Prediction, Target, Task, TaskMetric, is_garbled, normalize_target, strip_tags
from osum_tasks.corpora import aishell, librispeech, wenetspeech

PROMPTS = {
    # OSUM's prompt_config.yaml (the three paraphrases recorded in the reference notes), then two of ours.
    "zh": (
        "转录如下音频。",
        "执行语音识别任务，将音频转换为文字。",
        "将这段音频的语音内容详细记录为文字稿。",
        "请把这段语音转写成文字。",
        "识别音频中的说话内容并输出文本。",
    ),
    "en": (
        "Transcribe the audio.",
        "Write down what is said in this audio.",
        "Convert the speech to text.",
        "Transcribe the speech in this recording.",
        "What does the speaker say? Write it down.",
    ),
}


def build_target(example: Mapping[str, Any]) -> Target:
    if "txt" not in example:
        raise ValueError("missing field 'txt'")
    return Target(normalize_target(str(example["txt"])))


def parse_output(text: str) -> Prediction:
    """Valid: words, without any ``<tag>`` or angle bracket (ASR writes none) or undecodable characters. A
    model that wrongly writes a tag still gets its words scored, not the tag."""
    if "<" in text or ">" in text:
        return Prediction(text=text, transcript=strip_tags(text), valid=False)
    transcript = text.strip()
    return Prediction(text=text, transcript=transcript, valid=bool(transcript) and not is_garbled(text))


def make_metric() -> TaskMetric:
    from osum_core.task import TranscriptMetric  # torch: imported when a run scores, not when osum lists tasks

    return TranscriptMetric()


TASK = Task(
    name="asr",
    tag="<TRANSCRIBE>",
    prompts=PROMPTS,
    build_target=build_target,
    parse_output=parse_output,
    make_metric=make_metric,
    metric="wer",
)


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: DemoRecipe()}  # the planned digit string, as spoken


@hookimpl
def osum_corpus_recipes() -> list[CorpusRecipe]:
    return [librispeech.RECIPE, aishell.RECIPE, wenetspeech.RECIPE]  # AISHELL-1 feeds SGC as well
