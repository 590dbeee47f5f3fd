"""Common Voice, in both layouts OSUM met it: Mozilla's TSV releases (``commonvoice``:
``cv-corpus-<version>/<locale>/{train,dev,test}.tsv`` and ``clips/*.mp3``) and the Kaggle copy its SGC and SAP
test sets came from (``kaggle-commonvoice``: ``cv-valid-test.csv`` … beside ``cv-valid-test/sample-*.mp3``).

A clip with a gender OSUM names gets an SGC line, one with an age an SAP line, and a clip with neither an
ASR line. Genders: ``male``/``female`` (and 17.0's ``male_masculine``/``female_feminine``); the others
(``other``, ``intersex``, ``transgender``, ``non-binary``, ``do_not_wish_to_say``) have no OSUM label and are
reported as left out. Ages: ``teens`` → child (the youngest bucket Common Voice has), ``twenties`` to
``fifties`` → adult, ``sixties`` to ``nineties`` → old. The transcript is the sentence as OSUM normalises
targets (lower case). MP3 is read where it lies."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

from osum_core.plugins import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.task import normalize_target

ASR_TAG, SGC_TAG, SAP_TAG = "<TRANSCRIBE>", "<TRANSCRIBE> <GENDER>", "<TRANSCRIBE> <AGE>"
GENDERS = {"male": "male", "female": "female", "male_masculine": "male", "female_feminine": "female"}
AGES = {"teens": "child", "twenties": "adult", "thirties": "adult", "fourties": "adult", "forties": "adult",
        "fifties": "adult", "sixties": "old", "seventies": "old", "eighties": "old", "nineties": "old"}
MOZILLA_SPLITS = ("train", "dev", "test")
KAGGLE_SPLITS = ("cv-valid-train", "cv-valid-dev", "cv-valid-test", "cv-other-train", "cv-other-dev", "cv-other-test")


def table_rows(path: Path, delimiter: str, needed: tuple[str, ...],
               quoted: bool) -> Iterator[tuple[int, dict[str, str] | LeftOut]]:
    """(line number, row) of a table; a row whose field count is not the header's is a `LeftOut`. Mozilla's
    TSVs are read without quote processing (`quoted` false): their sentences open quotes they never close,
    which a quoting reader would run on over the following lines. Kaggle's CSVs were written by a CSV
    writer, which quotes a text holding a comma."""
    with path.open(encoding="utf-8", newline="") as table:
        reader = csv.reader(table, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        header = next(reader, None) or []
        missing = [name for name in needed if name not in header]
        if missing:
            raise CorpusLayoutError(f"{path}: no column {', '.join(missing)} (its columns: {', '.join(header)})")
        for fields in reader:
            number = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                yield number, LeftOut(f"{path}:{number}", "unreadable row",
                                      f"{len(fields)} fields, the header has {len(header)}: {delimiter.join(fields)[:200]}")
                continue
            yield number, dict(zip(header, fields))


def clip_lines(stem: str, wav: Path, sentence: str, gender: str, age: str, where: str,
               common: Mapping[str, str]) -> Iterator[dict | LeftOut]:
    """The SGC, SAP or ASR lines of one clip (and what of its labels has no OSUM label)."""
    text = normalize_target(sentence)
    lines = []
    if gender:
        if gender in GENDERS:
            lines.append({"key": f"{stem}_sgc", "txt": f"{text}<{GENDERS[gender]}>", "task": SGC_TAG,
                          "gender": GENDERS[gender], "extra": {"raw_label": gender}})
        else:
            yield LeftOut(f"{where} (sgc)", "label not mapped", gender)
    if age:
        if age in AGES:
            lines.append({"key": f"{stem}_sap", "txt": f"{text}<{AGES[age]}>", "task": SAP_TAG,
                          "extra": {"raw_label": age}})
        else:
            yield LeftOut(f"{where} (sap)", "label not mapped", age)
    for line in lines or [{"key": f"{stem}_asr", "txt": text, "task": ASR_TAG}]:
        yield {**line, "wav": str(wav), **common}


# -- Mozilla's releases ------------------------------------------------------------------------------------


def locale_folders(source: Path) -> list[Path]:
    """`source` is a locale folder (holding train.tsv and clips/) or a ``cv-corpus-*`` folder holding them."""
    if (source / "clips").is_dir():
        return [source]
    found = sorted(p for p in source.iterdir() if (p / "clips").is_dir()) if source.is_dir() else []
    if not found:
        raise CorpusLayoutError("expected a Common Voice release as unpacked: cv-corpus-<version>/ holding "
                                "<locale>/ folders, or one <locale>/ folder, each with clips/ and train.tsv, dev.tsv, test.tsv")
    return found


def find_mozilla_splits(source: Path) -> list[str]:
    folders = locale_folders(source)
    return [split for split in MOZILLA_SPLITS if any((folder / f"{split}.tsv").is_file() for folder in folders)]


def read_mozilla(source: Path, split: str) -> Iterator[dict | LeftOut]:
    for folder in locale_folders(source):
        table = folder / f"{split}.tsv"
        if not table.is_file():
            continue
        for number, row in table_rows(table, "\t", ("path", "sentence"), quoted=False):
            if isinstance(row, LeftOut):
                yield row
                continue
            where = f"{table}:{number}"
            name, sentence = row.get("path", "").strip(), row.get("sentence", "").strip()
            if not name or not sentence:
                yield LeftOut(where, "empty transcript" if name else "unreadable row", row.get("path", ""))
                continue
            wav = folder / "clips" / name
            if not wav.is_file():
                yield LeftOut(where, "no audio", f"clips/{name} is missing")
                continue
            common = {"lang": row.get("locale", "").strip() or folder.name, **({"speaker": row["client_id"]} if row.get("client_id") else {})}
            yield from clip_lines(Path(name).stem, wav, sentence, row.get("gender", "").strip(),
                                  row.get("age", "").strip(), where, common)


COMMONVOICE = CorpusRecipe(
    name="commonvoice",
    description="Mozilla Common Voice (TSV releases, any locale): SGC and SAP where a clip has them, ASR otherwise",
    tasks=("sgc", "sap", "asr"),
    splits=MOZILLA_SPLITS,
    source="cv-corpus-<version>/ as unpacked (or one of its <locale>/ folders), with clips/ and train/dev/test.tsv",
    find_splits=find_mozilla_splits,
    read=read_mozilla,
)


# -- The Kaggle copy ---------------------------------------------------------------------------------------


def kaggle_root(source: Path) -> Path:
    for root in (source, source / "common-voice"):
        if any((root / f"{split}.csv").is_file() for split in KAGGLE_SPLITS):
            return root
    raise CorpusLayoutError("expected the Kaggle Common Voice folder as unpacked, holding cv-valid-train.csv, "
                            "cv-valid-test.csv, … and the cv-valid-train/ … audio folders")


def find_kaggle_splits(source: Path) -> list[str]:
    root = kaggle_root(source)
    return [split for split in KAGGLE_SPLITS if (root / f"{split}.csv").is_file()]


def kaggle_audio(root: Path, name: str) -> Path | None:
    """The clip, as the table names it (``cv-valid-test/sample-000000.mp3``) or one folder deeper, as Kaggle's
    archive unpacks it (``cv-valid-test/cv-valid-test/sample-000000.mp3``)."""
    first = root / name
    nested = root / Path(name).parts[0] / name
    return next((p for p in (first, nested) if p.is_file()), None)


def read_kaggle(source: Path, split: str) -> Iterator[dict | LeftOut]:
    root = kaggle_root(source)
    table = root / f"{split}.csv"
    for number, row in table_rows(table, ",", ("filename", "text", "age", "gender"), quoted=True):
        if isinstance(row, LeftOut):
            yield row
            continue
        where = f"{table}:{number}"
        name, sentence = row.get("filename", "").strip(), row.get("text", "").strip()
        if not name or not sentence:
            yield LeftOut(where, "empty transcript" if name else "unreadable row", name)
            continue
        wav = kaggle_audio(root, name)
        if wav is None:
            yield LeftOut(where, "no audio", f"{name} is missing")
            continue
        stem = f"{split}-{Path(name).stem}"  # sample-000000 repeats in every subset
        yield from clip_lines(stem, wav, sentence, row.get("gender", "").strip(), row.get("age", "").strip(),
                              where, {"lang": "en"})


KAGGLE_COMMONVOICE = CorpusRecipe(
    name="kaggle-commonvoice",
    description="Common Voice as copied to Kaggle (cv-valid-*.csv; OSUM's SGC/SAP test set): SGC, SAP, else ASR",
    tasks=("sgc", "sap", "asr"),
    splits=KAGGLE_SPLITS,
    source="the Kaggle Common Voice folder as unpacked, holding cv-valid-train.csv … and cv-valid-train/ …",
    find_splits=find_kaggle_splits,
    read=read_kaggle,
)
