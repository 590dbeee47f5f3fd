"""Reading OSUM's inline ``<tag>`` markers out of targets and generated text."""

from __future__ import annotations

import re

_SUFFIX_TAGS = re.compile(r"((?:<[^<>]*>)+)\s*$")
_TAG = re.compile(r"<([^<>]*)>")
_TAG_OR_BRACKET = re.compile(r"<[^<>]*>|<[^<>]*$|[<>]")  # a tag, one cut off at the end, a stray bracket
# U+FFFD (bytes the tokenizer could not decode), lone surrogates, control characters but tab and line breaks.
_GARBLED = re.compile(r"[\ufffd\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def split_suffix_tags(text: str) -> tuple[str, list[str]]:
    """``"one two<laugh>"`` -> ``("one two", ["laugh"])``; text without trailing tags -> ``(text, [])``."""
    text = text.strip()
    match = _SUFFIX_TAGS.search(text)
    if not match:
        return text, []
    return text[: match.start()].strip(), _TAG.findall(match.group(1))


def suffix_label(text: str) -> str | None:
    """The first of the trailing tags, the way OSUM's scorer reads a single-label answer; None if absent."""
    _, tags = split_suffix_tags(text)
    return tags[0].strip() if tags else None


def strip_tags(text: str) -> str:
    """The words of `text` without its ``<tags>`` (one cut off at the end included) and stray angle brackets,
    whitespace collapsed: what a malformed answer's transcript is scored as (``"one<0.3>two<0.5"`` ->
    ``"one two"``)."""
    return " ".join(_TAG_OR_BRACKET.sub(" ", text).split())


def is_garbled(text: str) -> bool:
    """Whether `text` holds characters no well-formed answer has: U+FFFD (bytes the tokenizer could not
    decode into a character), lone surrogates, or control characters other than tab and line breaks."""
    return _GARBLED.search(text) is not None
