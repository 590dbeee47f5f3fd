"""``commonvoice-langid``: language identification from a Common Voice release holding several locales
(``cv-corpus-<version>/<locale>/{train,dev,test}.tsv`` and ``clips/*.mp3``), written against osum's public
plugin API alone. Each clip of a locale this task labels (en, de, es, fr, it) gets a LANGID line, its
sentence then the locale; a locale folder it does not label is reported as left out, as a whole."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.task import normalize_target

SPLITS = ("train", "dev", "test")
TAG = "<TRANSCRIBE> <LANGID>"


def locales(source: Path) -> list[Path]:
    found = sorted(p for p in source.iterdir() if (p / "clips").is_dir())
    if not found:
        raise CorpusLayoutError("expected cv-corpus-<version>/ as unpacked, holding <locale>/ folders with clips/ "
                                "and train.tsv, dev.tsv, test.tsv")
    return found


def find_splits(source: Path) -> list[str]:
    folders = locales(source)
    return [split for split in SPLITS if any((folder / f"{split}.tsv").is_file() for folder in folders)]


def read(source: Path, split: str, labels: tuple[str, ...]) -> Iterator[dict | LeftOut]:
    for folder in locales(source):
        table = folder / f"{split}.tsv"
        if not table.is_file():
            continue
        if folder.name not in labels:
            yield LeftOut(str(folder), "label not mapped", folder.name)
            continue
        with table.open(encoding="utf-8", newline="") as rows:
            # No quote processing: Common Voice sentences open quotes they never close.
            reader = csv.DictReader(rows, delimiter="\t", quoting=csv.QUOTE_NONE)
            for number, row in enumerate(reader, 2):
                name, sentence = (row.get("path") or "").strip(), (row.get("sentence") or "").strip()
                wav = folder / "clips" / name
                if not name or not sentence:
                    yield LeftOut(f"{table}:{number}", "empty transcript")
                elif not wav.is_file():
                    yield LeftOut(f"{table}:{number}", "no audio", f"clips/{name} is missing")
                else:
                    yield {"key": f"{wav.stem}_langid", "wav": str(wav), "task": TAG, "lang": folder.name,
                           "txt": f"{normalize_target(sentence)}<{folder.name}>", "extra": {"raw_label": folder.name}}


def recipe(labels: tuple[str, ...]) -> CorpusRecipe:
    return CorpusRecipe(
        name="commonvoice-langid",
        description=f"Common Voice locales ({', '.join(labels)}) as spoken language identification",
        tasks=("langid",),
        splits=SPLITS,
        source="cv-corpus-<version>/ as unpacked, holding <locale>/ folders (en/, de/, …)",
        find_splits=find_splits,
        read=lambda source, split: read(source, split, labels),
    )
