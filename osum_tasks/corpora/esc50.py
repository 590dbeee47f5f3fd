"""ESC-50 (github.com/karolpiczak/ESC-50) as released: ``ESC-50-master/audio/*.wav`` (5 s clips, 44.1 kHz)
and ``meta/esc50.csv`` (filename, fold, target, category, esc10, src_file, take). VED lines: the four
human vocal categories OSUM's events name map to them, and every other category to ``other``. ESC-50 has
no official train/test split; its five folds are its subsets (``fold1`` … ``fold5``), as its own
cross-validation uses them. The clips hold no speech: the transcript is empty, the target the event."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut

FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")
VED_TAG = "<TRANSCRIBE> <CAPTION>"
EVENTS = {"laughing": "laugh", "coughing": "cough", "crying_baby": "cry", "sneezing": "sneeze"}
OTHER = "other"  # the 46 other categories (animals, nature, indoor and urban sounds, and human non-vocal ones)
META = Path("meta/esc50.csv")


def corpus_root(source: Path) -> Path:
    for root in (source, source / "ESC-50-master"):
        if (root / META).is_file():
            return root
    raise CorpusLayoutError("expected ESC-50-master/ as unpacked, holding meta/esc50.csv and audio/")


def find_splits(source: Path) -> list[str]:
    corpus_root(source)
    return list(FOLDS)


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    root = corpus_root(source)
    fold = FOLDS.index(split) + 1
    listed = set()
    with (root / META).open(newline="", encoding="utf-8") as table:
        for number, row in enumerate(csv.DictReader(table), 2):
            where = f"{root / META}:{number}"
            name, category = (row.get("filename") or "").strip(), (row.get("category") or "").strip()
            if not name or not category or not (row.get("fold") or "").strip().isdigit():
                yield LeftOut(where, "unreadable row", str(row))
                continue
            if int(row["fold"]) != fold:
                continue
            listed.add(name)
            wav = root / "audio" / name
            if not wav.is_file():
                yield LeftOut(where, "no audio", f"audio/{name} is missing")
                continue
            event = EVENTS.get(category, OTHER)
            yield {"key": f"{Path(name).stem}_ved", "wav": str(wav), "txt": f"<{event}>", "task": VED_TAG,
                   "extra": {"raw_label": category, "fold": fold}}
    for wav in sorted((root / "audio").glob(f"{fold}-*.wav")):
        if wav.name not in listed:
            yield LeftOut(str(wav), "not in meta/esc50.csv")


RECIPE = CorpusRecipe(
    name="esc50",
    description="ESC-50 (2,000 environmental sound clips, 5 folds): VED (laugh, cough, cry, sneeze; the rest other)",
    tasks=("ved",),
    splits=FOLDS,
    source="ESC-50-master/ as unpacked, holding audio/ and meta/esc50.csv",
    find_splits=find_splits,
    read=read,
)
