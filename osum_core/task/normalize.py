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


def whisper_english_normalizer(text: str) -> str:
    """Whisper's English normaliser (transformers' `EnglishTextNormalizer`: numbers to digits, "mister",
    contractions, fillers removed) for text without CJK characters; the basic one (CER) otherwise. The
    British-to-American spelling table ships with Whisper's tokenizer files, not with transformers, so it
    is not applied."""
    if re.search(rf"[{_CJK}]", text):
        return basic_normalizer(text)
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return " ".join(EnglishTextNormalizer({})(text).split())


TRANSCRIPT_NORMALIZERS = {"basic": basic_normalizer, "whisper_en": whisper_english_normalizer}
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


def normalize_transcript(text: str) -> str:
    """Scoring normalisation of a transcript, by the normaliser in force (`transcript_normalizer`)."""
    return TRANSCRIPT_NORMALIZERS[_current.get()](text)
