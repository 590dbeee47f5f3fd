"""The answers of ``/v1/audio/transcriptions`` in OpenAI's five formats: ``json``, ``text``, ``srt``, ``vtt``
and ``verbose_json``; segments made from word times.

With word times (the SRWT task), a segment ends at a pause of ``serve.segment_gap_seconds`` or once it spans
``serve.segment_max_seconds``; without them, one segment spans the audio. OpenAI's per-segment decoding
statistics (``avg_logprob``, ``compression_ratio``, ``no_speech_prob``) are Whisper's; osum does not compute
them and writes 0.0 (OpenAI's types require numbers). ``language`` is written as OpenAI writes it, the
language's English name (``english``, ``chinese``) for the codes osum's prompts have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
LANGUAGE_NAMES = {"en": "english", "zh": "chinese"}


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


def joined(words: Sequence[str]) -> str:
    return " ".join(w for w in words if w)


def word_segments(words: Sequence[Word], gap: float, longest: float) -> list[Segment]:
    """Consecutive words grouped into segments: a new one after a pause of at least `gap` seconds or when
    the current one would span more than `longest`."""
    groups: list[list[Word]] = []
    for word in words:
        if groups and word.start - groups[-1][-1].end < gap and word.end - groups[-1][0].start <= longest:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [Segment(g[0].start, g[-1].end, joined([w.word for w in g])) for g in groups]


def clock(seconds: float, decimal: str) -> str:
    """``HH:MM:SS,mmm`` (srt: `decimal` ``,``) or ``HH:MM:SS.mmm`` (vtt)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: Sequence[Segment]) -> str:
    return "".join(f"{n}\n{clock(s.start, ',')} --> {clock(s.end, ',')}\n{s.text}\n\n"
                   for n, s in enumerate(segments, start=1))


def vtt(segments: Sequence[Segment]) -> str:
    return "WEBVTT\n\n" + "".join(f"{clock(s.start, '.')} --> {clock(s.end, '.')}\n{s.text}\n\n" for s in segments)


def verbose_json(text: str, language: str | None, duration: float, segments: Sequence[Segment],
                 words: Sequence[Word] | None, temperature: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(language or "", language),
        "duration": round(duration, 3),
        "text": text,
        "segments": [
            {"id": n, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text, "tokens": [],
             "temperature": temperature, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
            for n, s in enumerate(segments)
        ],
    }
    if words is not None:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]
    return body
