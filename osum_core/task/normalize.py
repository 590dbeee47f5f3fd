"""Text normalisation for targets (OSUM's rules) and for scoring."""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterator
from contextvars import ContextVar

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_AROUND_CJK = re.compile(rf"\s*([{_CJK}])\s*")
_SPACE_AROUND_ANGLE = re.compile(r"\s*([<>])\s*")


def normalize_target(text: str) -> str:
    """OSUM's target normalisation (processor.process_text): no spaces around CJK characters or around
    '<' and '>', everything lowercased. Applied to every training target and to references when scoring."""
    text = _SPACE_AROUND_CJK.sub(r"\1", text.strip())
    text = text.lower()
    return _SPACE_AROUND_ANGLE.sub(r"\1", text).strip()


def basic_normalizer(text: str) -> str:
    """Lowercase, punctuation removed, CJK characters split into words, spaces collapsed.

    Splitting CJK characters makes WER on Chinese equal to CER, as OSUM scores it (compute-wer --char=1)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = re.sub(rf"([{_CJK}])", r" \1 ", text)
    return " ".join(text.split())


def english_normalizer(text: str) -> str:
    """Whisper's English normaliser (transformers' `EnglishTextNormalizer`: numbers to digits, "mister",
    contractions, fillers removed). The British-to-American spelling table ships with Whisper's tokenizer
    files, not with transformers, so it is not applied."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return " ".join(EnglishTextNormalizer({})(text).split())


def whisper_english_normalizer(*texts: str) -> list[str]:
    """Whisper's English normaliser for texts without CJK characters; the basic one (CER) for all of them
    when any has one, so that the two sides of a code-switched pair are normalised alike."""
    chosen = basic_normalizer if any(re.search(rf"[{_CJK}]", text) for text in texts) else english_normalizer
    return [chosen(text) for text in texts]


# Each takes the texts compared with each other (a hypothesis and its reference) and treats them alike.
TRANSCRIPT_NORMALIZERS = {
    "basic": lambda *texts: [basic_normalizer(text) for text in texts],
    "whisper_en": whisper_english_normalizer,
}
_current = ContextVar("transcript_normalizer", default="basic")


@contextlib.contextmanager
def transcript_normalizer(name: str) -> Iterator[None]:
    """Score transcripts with normaliser `name` (config ``eval.normalizer``) inside the block. A context
    rather than a metric argument, so that task plugins' metrics need not pass it along."""
    if name not in TRANSCRIPT_NORMALIZERS:
        raise ValueError(f"eval.normalizer must be one of {sorted(TRANSCRIPT_NORMALIZERS)}, got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def normalize_pair(hypothesis: str, reference: str) -> tuple[str, str]:
    """A hypothesis and its reference normalised alike, by the normaliser in force (`transcript_normalizer`):
    one decision for the pair, never one per side (a code-switched reference and an English-only hypothesis
    would otherwise be scored one by words, the other by characters)."""
    hypothesis, reference = TRANSCRIPT_NORMALIZERS[_current.get()](hypothesis, reference)
    return hypothesis, reference


def normalize_transcript(text: str) -> str:
    """Scoring normalisation of a transcript alone; compare two with `normalize_pair`."""
    return TRANSCRIPT_NORMALIZERS[_current.get()](text)[0]
