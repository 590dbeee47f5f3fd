"""AISHELL-1 (openslr.org/33) as released: ``data_aishell/wav/{train,dev,test}/<speaker>/<ID>.wav`` (the
per-speaker archives in ``data_aishell/wav/`` unpacked), ``data_aishell/transcript/aishell_transcript_v0.8.txt``
(``ID`` then the word-segmented text) and ``resource_aishell/speaker.info`` (speaker and gender). ASR lines,
and SGC lines where the speaker's gender is known (OSUM tested SGC on AISHELL-1's test set). The target has no
spaces between Chinese characters, as OSUM's `process_text` makes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.task import normalize_target

SUBSETS = ("train", "dev", "test")
TRANSCRIPT = Path("data_aishell/transcript/aishell_transcript_v0.8.txt")
SPEAKER_INFO = Path("resource_aishell/speaker.info")
ASR_TAG, SGC_TAG = "<TRANSCRIBE>", "<TRANSCRIBE> <GENDER>"
GENDERS = {"f": "female", "m": "male", "female": "female", "male": "male"}
UNPACK = "for f in data_aishell/wav/*.tar.gz; do tar -xzf \"$f\" -C data_aishell/wav; done"


def corpus_root(source: Path) -> Path:
    """`source` holds ``data_aishell/`` (and ``resource_aishell/``), or is ``data_aishell/`` itself."""
    for root in (source, source.parent, source / "aishell"):
        if (root / "data_aishell").is_dir():
            return root
    raise CorpusLayoutError("expected the AISHELL-1 release as unpacked: a folder holding data_aishell/ "
                            "(wav/, transcript/) and resource_aishell/")


def find_splits(source: Path) -> list[str]:
    wav = corpus_root(source) / "data_aishell" / "wav"
    present = [subset for subset in SUBSETS if (wav / subset).is_dir()]
    if not present and any(wav.glob("*.tar.gz")):
        raise CorpusLayoutError(f"{wav} holds the per-speaker archives, not yet unpacked; in {corpus_root(source)}"
                                f" run: {UNPACK}")
    return present


def speaker_genders(root: Path) -> tuple[dict[str, str], list[LeftOut]]:
    """Speaker id (``S0002``) -> raw gender (``F``), from speaker.info (``0002 F`` per line)."""
    path = root / SPEAKER_INFO
    genders, bad = {}, []
    if not path.is_file():
        return {}, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or fields[1].lower() not in GENDERS:
            bad.append(LeftOut(f"{path}:{number}", "unreadable speaker line", line.strip()))
            continue
        speaker = fields[0] if fields[0].upper().startswith("S") else f"S{fields[0]}"
        genders[speaker.upper()] = fields[1]
    return genders, bad


def transcripts(root: Path) -> dict[str, tuple[str, str]]:
    """Utterance id -> (where, text)."""
    path = root / TRANSCRIPT
    if not path.is_file():
        raise CorpusLayoutError(f"{path} is missing: the release's transcripts are needed")
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        utterance, _, words = line.strip().partition(" ")
        if utterance:
            found[utterance] = (f"{path}:{number}", words.strip())
    return found


def read(source: Path, split: str) -> Iterator[dict | LeftOut]:
    root = corpus_root(source)
    said = transcripts(root)
    genders, bad = speaker_genders(root)
    if split == SUBSETS[0]:
        yield from bad  # reported once, with the first subset
    wav_root = root / "data_aishell" / "wav"
    if split == SUBSETS[0]:  # an archive whose speaker folder is in no subset (unpacking leaves the archive)
        for archive in sorted(wav_root.glob("*.tar.gz")):
            speaker = archive.name.removesuffix(".tar.gz")
            if not any((wav_root / subset / speaker).is_dir() for subset in SUBSETS):
                yield LeftOut(str(archive), "archive not unpacked", UNPACK)
    for wav in sorted((root / "data_aishell" / "wav" / split).glob("*/*.wav")):
        utterance, speaker = wav.stem, wav.parent.name
        if utterance not in said:
            yield LeftOut(str(wav), "no transcript", f"{utterance} is not in {TRANSCRIPT.name}")
            continue
        where, words = said[utterance]
        if not words:
            yield LeftOut(where, "empty transcript", utterance)
            continue
        text = normalize_target(words)
        common = {"wav": str(wav), "speaker": speaker, "lang": "zh"}
        yield {"key": f"{utterance}_asr", "txt": text, "task": ASR_TAG, **common}
        raw = genders.get(speaker.upper())
        if raw is None:
            yield LeftOut(f"{utterance} (sgc)", "no speaker gender", f"{speaker} is not in {SPEAKER_INFO}")
            continue
        yield {"key": f"{utterance}_sgc", "txt": f"{text}<{GENDERS[raw.lower()]}>", "task": SGC_TAG,
               "gender": GENDERS[raw.lower()], "extra": {"raw_label": raw}, **common}
    # Transcript lines of this subset's speakers whose audio is missing.
    speakers = {p.name for p in (root / "data_aishell" / "wav" / split).iterdir() if p.is_dir()}
    for utterance, (where, _) in said.items():
        if utterance[6:11] in speakers and not (root / "data_aishell" / "wav" / split / utterance[6:11] / f"{utterance}.wav").is_file():
            yield LeftOut(where, "no audio", f"{utterance}.wav is missing")


RECIPE = CorpusRecipe(
    name="aishell",
    description="AISHELL-1 (Mandarin read speech, 178 h): ASR, and SGC from the speakers' genders",
    tasks=("asr", "sgc"),
    splits=SUBSETS,
    source="the folder holding data_aishell/ (wav/ with the speaker archives unpacked, transcript/) and resource_aishell/",
    find_splits=find_splits,
    read=read,
)
