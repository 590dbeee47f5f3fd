"""WenetSpeech (Zhang et al. 2022) as released: ``WenetSpeech.json`` (every recording, ``audios[]``, with its
``path`` under the release folder, ``format`` and ``segments[]``: ``sid``, ``begin_time``, ``end_time``,
``text``, ``subsets``) and ``audio/…/*.opus``, recordings up to hours long. ASR lines, one per segment: the
recording's file with ``start`` and ``end``, which osum reads as that segment (nothing is cut or copied).
The JSON is streamed (``ijson``), never loaded whole. A subset is a release subset, lower-cased: ``s``, ``m``,
``l`` (nested: S ⊂ M ⊂ L, the same segments under the same keys: train on one of them), ``w`` (weakly
labelled), ``dev``, ``test_net``, ``test_meeting``; by default ``l`` and the three evaluation subsets, others
with ``--splits`` (e.g. ``m,dev,test_net,test_meeting``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.task import normalize_target

SUBSETS = ("s", "m", "l", "w", "dev", "test_net", "test_meeting")
RELEASE_NAMES = {"s": "S", "m": "M", "l": "L", "w": "W", "dev": "DEV", "test_net": "TEST_NET", "test_meeting": "TEST_MEETING"}
ASR_TAG = "<TRANSCRIBE>"
META = "WenetSpeech.json"


def corpus_root(source: Path) -> Path:
    for root in (source, source / "WenetSpeech"):
        if (root / META).is_file():
            return root
    raise CorpusLayoutError(f"expected the WenetSpeech release as unpacked: a folder holding {META} and audio/")


def find_splits(source: Path) -> list[str]:
    corpus_root(source)
    return list(SUBSETS)  # which ones have segments shows only by reading the whole JSON


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    import ijson

    root = corpus_root(source)
    wanted = RELEASE_NAMES[split]
    with (root / META).open("rb") as meta:
        for number, recording in enumerate(ijson.items(meta, "audios.item", use_float=True)):
            segments = [s for s in recording.get("segments") or () if wanted in (s.get("subsets") or ())]
            if not segments:
                continue
            name = recording.get("path")
            aid = recording.get("aid", f"audios[{number}]")
            wav = root / name if isinstance(name, str) else None
            present = wav is not None and wav.is_file()  # once per recording, not per segment (15M stats)
            for segment in segments:
                sid = str(segment.get("sid") or f"{aid}_{segment.get('begin_time')}")
                text = str(segment.get("text") or "").strip()
                start, end = segment.get("begin_time"), segment.get("end_time")
                if not present:
                    yield LeftOut(sid, "no audio", f"{name} is missing")
                elif not text:
                    yield LeftOut(sid, "empty transcript")
                elif not (isinstance(start, int | float) and isinstance(end, int | float) and 0 <= start < end):
                    yield LeftOut(sid, "unreadable segment", f"begin_time {start}, end_time {end}")
                else:
                    yield {"key": f"{sid}_asr", "wav": str(wav), "start": round(float(start), 3),
                           "end": round(float(end), 3), "txt": normalize_target(text), "task": ASR_TAG, "lang": "zh",
                           "extra": {"source": recording.get("source", ""), "confidence": segment.get("confidence")}}


RECIPE = CorpusRecipe(
    name="wenetspeech",
    description="WenetSpeech (10k h Mandarin, Opus recordings cut into segments): ASR; choose subsets with --splits",
    tasks=("asr",),
    splits=SUBSETS,
    source=f"the WenetSpeech release as unpacked, holding {META} and audio/",
    find_splits=find_splits,
    read=read,
    default_splits=("l", "dev", "test_net", "test_meeting"),
)
