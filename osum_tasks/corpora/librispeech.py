"""LibriSpeech (openslr.org/12) as released: ``LibriSpeech/<subset>/<speaker>/<chapter>/`` holding
``<speaker>-<chapter>.trans.txt`` (``ID WORDS`` per line, upper case) and ``<ID>.flac``. ASR lines only; the
transcript is lower-cased as OSUM's `process_text` does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut

SUBSETS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
           "test-other")
ASR_TAG = "<TRANSCRIBE>"


def corpus_root(source: Path) -> Path:
    """`source` is ``LibriSpeech/`` or the folder holding it."""
    for root in (source, source / "LibriSpeech"):
        if any((root / subset).is_dir() for subset in SUBSETS):
            return root
    raise CorpusLayoutError(f"expected LibriSpeech/ as unpacked, holding subset folders ({', '.join(SUBSETS)})")


def find_splits(source: Path) -> list[str]:
    root = corpus_root(source)
    return [subset for subset in SUBSETS if (root / subset).is_dir()]


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    folder = corpus_root(source) / split
    for chapter in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        speaker = chapter.parent.name
        transcripts = chapter / f"{speaker}-{chapter.name}.trans.txt"
        audio = {p.stem: p for p in chapter.glob("*.flac")}
        if not transcripts.is_file():
            for stem in sorted(audio):
                yield LeftOut(str(audio[stem]), "no transcript", f"{transcripts.name} is missing")
            continue
        said = set()
        for number, line in enumerate(transcripts.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utterance, _, words = line.strip().partition(" ")
            where = f"{transcripts}:{number}"
            if not words.strip():
                yield LeftOut(where, "empty transcript", utterance)
                continue
            said.add(utterance)
            if utterance not in audio:
                yield LeftOut(where, "no audio", f"{utterance}.flac is missing")
                continue
            yield {"key": f"{utterance}_asr", "wav": str(audio[utterance]), "txt": words.strip().lower(),
                   "task": ASR_TAG, "speaker": speaker, "lang": "en"}
        for stem in sorted(set(audio) - said):
            yield LeftOut(str(audio[stem]), "no transcript", f"no line for {stem} in {transcripts.name}")


RECIPE = CorpusRecipe(
    name="librispeech",
    description="LibriSpeech (English read audiobooks, 960 h + dev/test): ASR",
    tasks=("asr",),
    splits=SUBSETS,
    source="LibriSpeech/ as unpacked (or its parent), holding train-clean-100/, dev-clean/, test-clean/, …",
    find_splits=find_splits,
    read=read,
)
