"""Reading OSUM's inline ``<tag>`` markers out of targets and generated text."""

from __future__ import annotations

import re

_SUFFIX_TAGS = re.compile(r"((?:<[^<>]*>)+)\s*$")
_TAG = re.compile(r"<([^<>]*)>")


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
