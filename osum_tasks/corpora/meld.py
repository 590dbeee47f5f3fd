"""MELD (Poria et al. 2019) as released: ``MELD.Raw/`` with ``{train,dev,test}_sent_emo.csv`` (Sr No., Utterance,
Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, …) and the clips ``dia<D>_utt<U>.mp4`` in
``train_splits/``, ``dev_splits_complete/`` and ``output_repeated_splits_test/`` (its ``train.tar.gz``,
``dev.tar.gz`` and ``test.tar.gz`` unpacked in place). SER lines: the utterance, then OSUM's emotion tag.
The audio is inside the .mp4 video: osum extracts it once into OUT_DIR/audio/ (PyAV, ``pip install av``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.task import normalize_target

SPLITS = ("train", "dev", "test")
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SER_TAG = "<TRANSCRIBE> <EMOTION>"
EMOTIONS = {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "anger", "surprise": "surprise",
            "fear": "fear", "disgust": "disgust"}
# Clips the release ships broken (declare-lab/MELD issues #20, #27, #39; espnet's MELD recipe skips the same).
KNOWN_BROKEN = {
    ("train", 125, 3): "corrupted in the release (MELD issue #39)",
    ("dev", 110, 7): "missing from the release (MELD issues #22, #27)",
    ("test", 38, 4): "cut wrongly in the release: minutes long (MELD issue #20)",
    ("test", 220, 0): "cut wrongly in the release: minutes long (MELD issue #20)",
}
UNPACK = "tar -xzf train.tar.gz && tar -xzf dev.tar.gz && tar -xzf test.tar.gz (in MELD.Raw/)"


def corpus_root(source: Path) -> Path:
    for root in (source, source / "MELD.Raw"):
        if any((root / f"{split}_sent_emo.csv").is_file() or (root / f"{split}.tar.gz").is_file() for split in SPLITS):
            return root
    raise CorpusLayoutError("expected MELD.Raw/ as unpacked, holding train_sent_emo.csv, dev_sent_emo.csv, "
                            "test_sent_emo.csv and the clip folders train_splits/, dev_splits_complete/, "
                            "output_repeated_splits_test/")


def located(root: Path, name: str, split: str) -> Path | None:
    """`name` in MELD.Raw/ or in its split's folder (where some unpackers put it)."""
    return next((p for p in (root / name, root / split / name) if p.exists()), None)


def find_splits(source: Path) -> list[str]:
    root = corpus_root(source)
    present = []
    for split in SPLITS:
        if located(root, f"{split}_sent_emo.csv", split) is None:
            continue
        if located(root, CLIP_FOLDERS[split], split) is None:
            if (root / f"{split}.tar.gz").is_file():
                raise CorpusLayoutError(f"{root / (split + '.tar.gz')} is not unpacked: {UNPACK}")
            continue
        present.append(split)
    return present


def table_lines(path: Path) -> Iterator[str]:
    """The CSV's lines as text: UTF-8, or Windows-1252 where a line is not (the release's apostrophes, \\x92)."""
    for raw in path.read_bytes().splitlines(keepends=True):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield raw.decode("cp1252", errors="replace")


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    root = corpus_root(source)
    table = located(root, f"{split}_sent_emo.csv", split)
    clips = located(root, CLIP_FOLDERS[split], split)
    assert table is not None and clips is not None  # find_splits listed this split
    listed = set()
    reader = csv.DictReader(io.StringIO("".join(table_lines(table))))
    missing = {"Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"} - set(reader.fieldnames or ())
    if missing:
        raise CorpusLayoutError(f"{table}: no column {', '.join(sorted(missing))} (its columns: {', '.join(reader.fieldnames or ())})")
    for number, row in enumerate(reader, 2):
        where = f"{table}:{number}"
        try:
            dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except (TypeError, ValueError):
            yield LeftOut(where, "unreadable row", str(row)[:200])
            continue
        name = f"dia{dialogue}_utt{utterance}.mp4"
        listed.add(name)
        if (split, dialogue, utterance) in KNOWN_BROKEN:
            yield LeftOut(where, "known broken", f"{name}: {KNOWN_BROKEN[split, dialogue, utterance]}")
            continue
        emotion = (row.get("Emotion") or "").strip().lower()
        if emotion not in EMOTIONS:
            yield LeftOut(where, "label not mapped", emotion)
            continue
        text = " ".join((row.get("Utterance") or "").replace("\u2019", "'").replace("\x92", "'").split())
        if not text:
            yield LeftOut(where, "empty transcript", name)
            continue
        if not (clips / name).is_file():
            yield LeftOut(where, "no audio", f"{clips.name}/{name} is missing")
            continue
        yield {"key": f"meld-{split}-dia{dialogue}_utt{utterance}_ser", "wav": str(clips / name),
               "txt": f"{normalize_target(text)}<{EMOTIONS[emotion]}>", "task": SER_TAG, "lang": "en",
               "speaker": (row.get("Speaker") or "").strip(), "extra": {"raw_label": emotion}}
    for clip in sorted(clips.glob("*.mp4")):
        if clip.name not in listed:
            yield LeftOut(str(clip), f"not in {table.name}")


RECIPE = CorpusRecipe(
    name="meld",
    description="MELD (Friends dialogue clips, 13k utterances): SER (needs PyAV: pip install av)",
    tasks=("ser",),
    splits=SPLITS,
    source="MELD.Raw/ as unpacked, with its train/dev/test archives unpacked in place",
    find_splits=find_splits,
    read=read,
)
