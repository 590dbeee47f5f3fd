"""SRWT: transcription with word timestamps, OSUM tag ``<TRANSCRIBE> <ALIGN>``.

Target format. OSUM's prompts ask for the start and end of every English word / Chinese character at
0.1 s, written in ``<>``; its repository never shows the serialisation, so it is an option here:
- ``word_format`` (default ``<{start}>{word}<{end}>``): how one word is written; ``{word}<{start},{end}>``
  is the other common reading. Words follow each other with no space (OSUM's normalisation removes
  spaces around ``<`` and ``>``), e.g. ``<0.3>three<0.7><0.8>four<1.2>``;
- ``resolution`` (default 0.1): seconds per step; times are rounded to it.
Set them as ``tasks.srwt.word_format=...`` and ``tasks.srwt.resolution=...``.

Where targets come from: the manifest's ``extra.words`` (``[[word, start, end], ...]`` in seconds, as the
demo corpus and forced aligners write them) or, failing that, ``txt`` already in the target format.

Metric: WER/CER of the words, and ``timestamp_error_ms``: the mean absolute shift of word boundaries
(start and end each count once) over the words the hypothesis gets right, matched to the reference in
order (difflib's longest matching blocks); ``matched_words`` is their share of reference words. The
reference is the serialised target, so its times are already rounded to the resolution."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from osum_core.plugins import DemoRecipe, hookimpl
from osum_core.task import Prediction, Target, Task, is_garbled, normalize_target, strip_tags

WORD_FORMAT = "<{start}>{word}<{end}>"
RESOLUTION = 0.1
_TIME = r"(\d+(?:\.\d+)?)"

PROMPTS = {
    "zh": (
        # OSUM's prompt_config.yaml, then its Gradio demo's wording; the last three are ours in their style.
        "请将以下音频进行转录，同时标记出每个英文单词及对应中文字符的起始与结束时间，时间单位精确到0.1秒，"
        "并用<>来表示这些时间范围。",
        "请转录音频内容，并为每个英文词汇及其对应的中文翻译标注出精确到0.1秒的起止时间，时间范围用<>括起来。",
        "转录这段音频，并在每个英文单词和中文字符的前后添加时间戳，时间戳格式为<>，精确到0.1秒。",
        "请输出音频的转写文本，每个词前后附上用<>包围的起止时间，单位为秒，精度0.1秒。",
        "识别语音内容，同时给出每个英文单词或中文字符的开始和结束时间（保留一位小数），写在<>中。",
    ),
    "en": (
        "Transcribe the audio with the start and end time of every word, in seconds at 0.1 s, each time in <>.",
        "Write down what is said and mark when each word starts and ends, with times in angle brackets.",
        "Transcribe the speech with word timestamps at 0.1 second resolution.",
        "Give the transcript with each word's start and end time in <>.",
        "Convert the speech to text, putting every word between its start and end times.",
    ),
}


def word_pattern(word_format: str) -> re.Pattern:
    """A regex that reads one word written in `word_format` (groups: word, start, end)."""
    pattern = re.escape(normalize_target(word_format))
    for name, group in (("word", r"(?P<word>[^<>]+?)"), ("start", f"(?P<start>{_TIME[1:-1]})"), ("end", f"(?P<end>{_TIME[1:-1]})")):
        escaped = re.escape("{" + name + "}")
        if escaped not in pattern:
            raise ValueError(f"tasks.srwt.word_format {word_format!r} lacks {{{name}}}")
        pattern = pattern.replace(escaped, group, 1)
    return re.compile(pattern)


def make_task(word_format: str = WORD_FORMAT, resolution: float = RESOLUTION) -> Task:
    resolution = float(resolution)
    if resolution <= 0:
        raise ValueError(f"tasks.srwt.resolution must be > 0, got {resolution}")
    decimals = max(0, -math.floor(math.log10(resolution) + 1e-9))
    pattern = word_pattern(word_format)

    def stamp(seconds: float) -> str:
        return f"{round(float(seconds) / resolution) * resolution:.{decimals}f}"

    def read(text: str) -> list[tuple[str, float, float]]:
        return [(m["word"].strip(), float(m["start"]), float(m["end"])) for m in pattern.finditer(text)]

    def problem(text: str, timed: list[tuple[str, float, float]]) -> str | None:
        """Why `text` (read as `timed`) is not in the word format, or None when it is."""
        if not timed:
            return f"no word in the word format {word_format!r}"
        if pattern.sub(" ", text).strip():
            return f"text outside the word format {word_format!r}"
        for index, (word, start, end) in enumerate(timed):
            if not word:
                return f"word {index + 1} is empty"
            if not (math.isfinite(start) and math.isfinite(end)) or start > end:
                return f"word {index + 1} ({word!r}) ends before it starts"
            if index and start < timed[index - 1][1]:
                return f"word {index + 1} ({word!r}) starts before the word before it"
        return "undecodable characters" if is_garbled(text) else None

    def piece(word: Any, start: Any, end: Any) -> str:
        start, end = float(start), float(end)
        if not 0 <= start <= end < math.inf:
            raise ValueError
        return word_format.format(word=word, start=stamp(start), end=stamp(end))

    def build_target(example: Mapping[str, Any]) -> Target:
        given = example.get("extra")
        extra: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        words = extra.get("words")
        if words:
            try:
                pieces = [piece(w, s, e) for w, s, e in words]
            except (TypeError, ValueError, OverflowError):
                raise ValueError("'extra.words' must be a list of [word, start, end], 0 <= start <= end seconds") from None
            body = normalize_target(" ".join(pieces))
            where = "'extra.words'"
        else:
            pieces = []
            body = normalize_target(str(example.get("txt", "")))
            where = "no 'extra.words' and 'txt'"
        timed = read(body)
        wrong = problem(body, timed)
        if wrong is None and pieces and len(timed) != len(pieces):
            wrong = f"{len(pieces)} words read back as {len(timed)}: a word is empty or holds '<' or '>'"
        if wrong is not None:
            raise ValueError(f"{where}: {wrong}")
        return Target(" ".join(w for w, _, _ in timed), body=body)

    def parse_output(text: str) -> Prediction:
        """Valid: only words in the word format, each ending after it starts, in order of their starts. An
        invalid answer's transcript is its words without any tags."""
        timed = read(text)
        valid = problem(text, timed) is None
        transcript = " ".join(w for w, _, _ in timed) if valid else strip_tags(text)
        return Prediction(text=text, transcript=transcript, fields={"timestamps": timed}, valid=valid)

    def make_metric() -> TimestampMetric:
        return TimestampMetric(read)

    return Task(
        name="srwt",
        tag="<TRANSCRIBE> <ALIGN>",
        prompts=PROMPTS,
        build_target=build_target,
        parse_output=parse_output,
        make_metric=make_metric,
        metric="timestamp_error_ms",
        options={"word_format": WORD_FORMAT, "resolution": RESOLUTION},
        configure=make_task,
    )


class TimestampMetric:
    """WER/CER, and the mean boundary shift in ms over matched words (see the module docstring)."""

    def __init__(self, read) -> None:
        # torch and torchmetrics: imported when a run scores, not when osum lists tasks.
        from torchmetrics.aggregation import MeanMetric

        from osum_core.task import TranscriptMetric

        self.read = read
        self.transcript = TranscriptMetric()
        self.shift_ms = MeanMetric()
        self.matched = 0
        self.reference_words = 0

    def update(self, predictions: Sequence[Prediction], targets: Sequence[Target]) -> None:
        self.transcript.update(predictions, targets)
        for prediction, target in zip(predictions, targets, strict=True):
            reference = self.read(target.body)
            # An invalid answer's times (reversed, out of order, among garbage) match no reference word.
            hypothesis = list(prediction.fields.get("timestamps", ())) if prediction.valid else []
            self.reference_words += len(reference)
            blocks = difflib.SequenceMatcher(a=[w for w, _, _ in reference], b=[w for w, _, _ in hypothesis])
            for block in blocks.get_matching_blocks():
                for k in range(block.size):
                    (_, rs, re_), (_, hs, he) = reference[block.a + k], hypothesis[block.b + k]
                    self.shift_ms.update(abs(hs - rs) * 1000)
                    self.shift_ms.update(abs(he - re_) * 1000)
                    self.matched += 1

    def compute(self) -> dict[str, float]:
        scores = self.transcript.compute()
        if not scores:
            return {}
        error = float(self.shift_ms.compute()) if self.matched else float("nan")
        return {
            "timestamp_error_ms": error,
            "matched_words": self.matched / max(self.reference_words, 1),
            **scores,
        }


TASK = make_task()


@hookimpl
def osum_tasks() -> list[Task]:
    return [TASK]


@hookimpl
def osum_demo_recipes() -> dict[str, DemoRecipe]:
    return {TASK.tag: DemoRecipe()}  # the digit string; its word timings land in extra.words
