"""Text normalisation for targets (OSUM's rules) and for scoring."""

from __future__ import annotations

import re
import unicodedata

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_AROUND_CJK = re.compile(rf"\s*([{_CJK}])\s*")
_SPACE_AROUND_ANGLE = re.compile(r"\s*([<>])\s*")


def normalize_target(text: str) -> str:
    """OSUM's target normalisation (processor.process_text): no spaces around CJK characters or around
    '<' and '>', everything lowercased. Applied to every training target and to references when scoring."""
    text = _SPACE_AROUND_CJK.sub(r"\1", text.strip())
    text = text.lower()
    return _SPACE_AROUND_ANGLE.sub(r"\1", text).strip()


def normalize_transcript(text: str) -> str:
    """Scoring normalisation: lowercase, punctuation removed, CJK characters split into words, spaces collapsed.

    Splitting CJK characters makes WER on Chinese equal to CER, as OSUM scores it (compute-wer --char=1)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = re.sub(rf"([{_CJK}])", r" \1 ", text)
    return " ".join(text.split())
