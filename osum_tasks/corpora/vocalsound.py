"""VocalSound (Gong et al. 2022), the 16 kHz release as unzipped: ``audio_16k/<f|m><speaker>_<n>_<label>.wav``,
``datafiles/{tr,val,te}.json`` (``{"data": [{"wav": …, "labels": …}]}``, the authors' splits by speaker) and
``meta/``. VED lines, the label read from the file name; the speaker's gender (its id's first letter) is
kept as ``gender``. The split files hold the authors' absolute paths: clips are matched by file name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut

SPLIT_FILES = {"train": "tr.json", "dev": "val.json", "test": "te.json"}
VED_TAG = "<TRANSCRIBE> <CAPTION>"
EVENTS = {"laughter": "laugh", "sigh": "sigh", "cough": "cough", "throatclearing": "throat clearing",
          "sneeze": "sneeze", "sniff": "other"}  # OSUM's eight events have no sniff
GENDERS = {"f": "female", "m": "male"}


def corpus_root(source: Path) -> Path:
    for root in (source, source / "vs_release_16k"):
        if (root / "audio_16k").is_dir() and (root / "datafiles").is_dir():
            return root
    raise CorpusLayoutError("expected the VocalSound 16 kHz release as unzipped: a folder holding audio_16k/ and "
                            "datafiles/ (tr.json, val.json, te.json)")


def find_splits(source: Path) -> list[str]:
    root = corpus_root(source)
    return [split for split, name in SPLIT_FILES.items() if (root / "datafiles" / name).is_file()]


def split_names(root: Path, split: str) -> tuple[list[str], list[LeftOut]]:
    """The clip file names a split file lists, in its order, and its unreadable entries."""
    path = root / "datafiles" / SPLIT_FILES[split]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorpusLayoutError(f"{path}: not a VocalSound split file ({{\"data\": [{{\"wav\": …}}]}}): {error}") from None
    names, bad = [], []
    for index, entry in enumerate(entries):
        wav = entry.get("wav") if isinstance(entry, dict) else None
        if not isinstance(wav, str) or not wav:
            bad.append(LeftOut(f"{path}: entry {index}", "unreadable entry", str(entry)[:200]))
            continue
        names.append(Path(wav.replace("\\", "/")).name)
    return names, bad


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    root = corpus_root(source)
    names, bad = split_names(root, split)
    yield from bad
    for name in names:
        wav = root / "audio_16k" / name
        speaker, _, label = Path(name).stem.partition("_")
        label = label.rpartition("_")[2]
        if label not in EVENTS:
            yield LeftOut(str(wav), "label not mapped", label)
            continue
        if not wav.is_file():
            yield LeftOut(str(wav), "no audio", f"listed in datafiles/{SPLIT_FILES[split]}")
            continue
        line = {"key": f"{Path(name).stem}_ved", "wav": str(wav), "txt": f"<{EVENTS[label]}>", "task": VED_TAG,
                "speaker": speaker, "extra": {"raw_label": label}}
        if speaker[:1] in GENDERS:
            line["gender"] = GENDERS[speaker[:1]]
        yield line
    if split == "train":  # clips no split file lists, reported once
        listed = {name for other in SPLIT_FILES if (root / "datafiles" / SPLIT_FILES[other]).is_file()
                  for name in split_names(root, other)[0]}
        for wav in sorted((root / "audio_16k").glob("*.wav")):
            if wav.name not in listed:
                yield LeftOut(str(wav), "in no split file")


RECIPE = CorpusRecipe(
    name="vocalsound",
    description="VocalSound (21k laughs, sighs, coughs, throat clearings, sneezes, sniffs): VED",
    tasks=("ved",),
    splits=tuple(SPLIT_FILES),
    source="the VocalSound 16 kHz release as unzipped, holding audio_16k/ and datafiles/",
    find_splits=find_splits,
    read=read,
)
