"""``osum data prepare``: run a plugin's `CorpusRecipe` over a corpus folder, as the release unpacks, into
manifests (or shards) and a report.

For each subset the recipe yields manifest lines and the items it left out. Every line's audio is then read
to its end, in parallel worker processes: its duration goes into the line, and a file that is missing,
empty, cut short or undecodable leaves its lines out, named in the report with the reason. Each line must
be one its task accepts (the task's own `build_target` runs on it, as training will). The subset is written
atomically as ``OUT_DIR/<subset>.jsonl`` (or, with shards, ``OUT_DIR/<subset>/shards.list`` and its tars),
then its part of the report (``OUT_DIR/.prepare/<subset>.json``): a subset whose part exists is finished,
and a re-run keeps it; one cut short by a crash is redone. ``OUT_DIR/prepare_report.json`` gathers the
parts: items, hours, tasks and labels per subset, every raw label and what it became, and everything left
out and why."""

from __future__ import annotations

import json
import multiprocessing
import os
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy
import soundfile

from osum_core.data.audio import CONTAINER_SUFFIXES, SPAN_SLACK_SECONDS, extract_audio, measure_audio
from osum_core.data.bad_items import BadItem
from osum_core.data.corpus_recipe import CorpusLayoutError, CorpusRecipe, LeftOut
from osum_core.data.dataset import assign_task, record_span, task_target
from osum_core.data.manifest import write_manifest
from osum_core.data.sharding import shard_manifests
from osum_core.task import Task

REPORT_NAME = "prepare_report.json"
LEFT_OUT_DIR = Path("left_out")  # <subset>.jsonl: every item a subset left out, and why
LEFT_OUT_SHOWN = 100  # of them, in the report itself
IN_FLIGHT_PER_WORKER = 16  # audio files handed to the worker pool ahead of its results
PARTS_DIR = ".prepare"  # each finished subset's part of the report
AUDIO_CHECKS = "audio.jsonl"  # in PARTS_DIR: every audio file's check (`AudioChecks`)
AUDIO_DIR = "audio"  # the WAVs of container files (.mp4) soundfile cannot read, extracted once
REQUIRED_FIELDS = ("key", "wav", "txt", "task")
# A file decoding to this much less than its header states is cut short (an MP3's header length is an estimate
# when it has no Xing frame: the share leaves it room).
CUT_SHORT_SECONDS, CUT_SHORT_SHARE = 0.2, 0.05
UNMAPPED = "label not mapped"  # the `LeftOut.reason` of an item whose raw label (its `detail`) maps to nothing


class PrepareError(ValueError):
    """The corpus cannot be prepared as asked (a wrong SRC_DIR, an unknown subset, a broken recipe): the
    message says why; nothing already finished is touched."""


@dataclass(frozen=True)
class AudioCheck:
    """One audio file, read to its end: its length in seconds, or why it cannot be used."""

    seconds: float = 0.0
    problem: str = ""


def check_audio(job: tuple[str, str | None]) -> AudioCheck:
    """In a worker process: decode the whole file, after extracting its audio into the job's WAV target
    when soundfile cannot read the container (an .mp4), unless a finished target is there already. Its
    duration, or why it is unusable. A file that decodes to much less than its header states was cut short
    (an MP3 decodes what is left of it)."""
    path, converted = job
    try:
        if converted is not None:
            if not Path(converted).is_file():
                extract_audio(path, converted)
            path = converted
        frames, rate = measure_audio(path)
        stated = soundfile.info(path).frames / rate
    except BadItem as error:
        return AudioCheck(problem=str(error))
    except Exception as error:  # noqa: BLE001 - any failure of one file costs that file only
        return AudioCheck(problem=f"{path}: {type(error).__name__}: {error}")
    seconds = frames / rate
    if stated - seconds > max(CUT_SHORT_SECONDS, CUT_SHORT_SHARE * stated):
        return AudioCheck(problem=f"{path}: cut short: its header states {stated:.2f} s, {seconds:.2f} s decode")
    return AudioCheck(seconds=seconds)


def converted_path(out: Path, split: str, source: Path, wav: str) -> str | None:
    """Where the WAV of a container file soundfile cannot read goes: OUT_DIR/audio/<split>/ and its path
    under SRC_DIR; None for a file read where it lies."""
    path = Path(wav)
    if path.suffix.lower() not in CONTAINER_SUFFIXES:
        return None
    try:
        relative = path.relative_to(source)
    except ValueError:
        relative = Path(path.name)
    return str((out / AUDIO_DIR / split / relative).with_suffix(".wav").absolute())


def checked_audio(jobs: Sequence[tuple[str, str | None]], workers: int,
                  on_result: Callable[[tuple[str, str | None], AudioCheck], None]) -> None:
    """`check_audio` of every (path, conversion target), `workers` processes at a time (0 or 1: here);
    `on_result(job, check)` as each finishes."""
    if workers <= 1:
        for job in jobs:
            on_result(job, check_audio(job))
        return
    # forkserver: workers do not inherit this process's threads (a fork can hang on a lock one of them held).
    context = multiprocessing.get_context("forkserver")
    pending: dict[Future[AudioCheck], tuple[str, str | None]] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for job in jobs:  # a bounded number in flight: 1.7 million clips are not 1.7 million futures at once
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                for future in wait(pending, return_when=FIRST_COMPLETED).done:
                    on_result(pending.pop(future), future.result())
            pending[pool.submit(check_audio, job)] = job
        for future in wait(pending).done:
            on_result(pending.pop(future), future.result())


class AudioChecks:
    """Every audio file's check, kept in ``OUT_DIR/.prepare/audio.jsonl`` as it is made, by path, conversion
    target, size and modification time: a file is decoded once for all subsets that use it (WenetSpeech's
    S, M and L share their recordings) and once across re-runs (a crash in a subset of 10,000 hours)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: dict[tuple[str, str | None, int, int], AudioCheck] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as lines:
                for text in lines:
                    try:
                        row = json.loads(text)
                        self.known[tuple(row["file"])] = AudioCheck(row["seconds"], row["problem"])  # type: ignore[index]
                    except (ValueError, KeyError, TypeError):  # a line cut short by a crash: checked again
                        continue

    @staticmethod
    def identity(job: tuple[str, str | None]) -> tuple[str, str | None, int, int] | None:
        try:
            stat = os.stat(job[0])
        except OSError:
            return None  # missing: checked again (cheaply) every time
        return (job[0], job[1], stat.st_size, stat.st_mtime_ns)

    def checked(self, jobs: Sequence[tuple[str, str | None]], workers: int,
                progress: Callable[[int], None] | None) -> dict[str, AudioCheck]:
        """`checked_audio` of the jobs not checked before, each recorded as it finishes; the others from
        the record."""
        identities = {job: self.identity(job) for job in jobs}
        results = {job[0]: self.known[i] for job, i in identities.items() if i is not None and i in self.known}
        if progress and results:
            progress(len(results))
        with self.path.open("a", encoding="utf-8") as record:
            def done(job: tuple[str, str | None], check: AudioCheck) -> None:
                results[job[0]] = check
                identity = identities[job]  # as stated before the check: a file changed since is checked again
                if identity is not None:
                    self.known[identity] = check
                    record.write(json.dumps({"file": identity, "seconds": check.seconds, "problem": check.problem},
                                            ensure_ascii=False) + "\n")
                    record.flush()
                if progress:
                    progress(1)

            checked_audio([job for job in jobs if job[0] not in results], workers, done)
        return results


def selected_splits(recipe: CorpusRecipe, source: Path, wanted: Sequence[str] | None) -> list[str]:
    """The subsets to prepare: `wanted`, or every one present under `source`; a wrong folder or an unknown
    or absent subset is a `PrepareError` saying what was expected."""
    if not source.is_dir():
        raise PrepareError(f"{source}: no such folder; recipe {recipe.name} expects {recipe.source}")
    try:
        present = [split for split in recipe.find_splits(source)]
    except CorpusLayoutError as error:
        raise PrepareError(f"{source}: {error}") from None
    unknown = [split for split in present if split not in recipe.splits]
    if unknown:
        raise PrepareError(f"recipe {recipe.name} found subsets it does not declare: {', '.join(unknown)}")
    if not present:
        raise PrepareError(f"{source}: none of {recipe.name}'s subsets ({', '.join(recipe.splits)}) is there; "
                           f"expected {recipe.source}")
    if wanted is None:
        defaults = [split for split in recipe.default_splits if split in present]
        return defaults or [split for split in recipe.splits if split in present]
    for split in wanted:
        if split not in recipe.splits:
            raise PrepareError(f"--splits: {recipe.name} has no subset {split!r}; its subsets: {', '.join(recipe.splits)}")
        if split not in present:
            raise PrepareError(f"--splits: subset {split!r} is not under {source}; found: {', '.join(present)}")
    return list(dict.fromkeys(wanted))


def recipe_tasks(recipe: CorpusRecipe, installed: Mapping[str, Task]) -> list[Task]:
    missing = [name for name in recipe.tasks if name not in installed]
    if missing:
        raise PrepareError(f"recipe {recipe.name} feeds task(s) {', '.join(missing)}, not installed "
                           f"(installed: {', '.join(sorted(installed))})")
    return [installed[name] for name in recipe.tasks]


def staged_split(recipe: CorpusRecipe, source: Path, split: str, lines_file: Path,
                 left_file: Path) -> tuple[list[str], set[str]]:
    """Stream the recipe's lines for one subset into `lines_file` and its left-out items into `left_file`
    (jsonl; a subset of millions of lines is never held in memory), each line's fields checked. Returns the
    distinct audio files in order, and the keys seen more than once."""
    paths: dict[str, None] = {}
    hashes = array("q")
    try:
        with lines_file.open("w", encoding="utf-8") as lines, left_file.open("w", encoding="utf-8") as left:
            for entry in recipe.read(source, split):
                if isinstance(entry, LeftOut):
                    left.write(left_out_json(entry) + "\n")
                    continue
                missing = [name for name in REQUIRED_FIELDS if not isinstance(entry.get(name), str | Path)]
                if missing:
                    raise PrepareError(f"recipe {recipe.name}, subset {split}: a line without "
                                       f"{', '.join(missing)}: {dict(entry)!r}")
                line = {**entry, "wav": str(Path(entry["wav"]).absolute())}
                lines.write(json.dumps(line, ensure_ascii=False) + "\n")
                paths[line["wav"]] = None
                hashes.append(hash(str(line["key"])))
    except PrepareError:
        raise
    except CorpusLayoutError as error:  # found only once reading (a table without its columns)
        raise PrepareError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a broken recipe is reported as such, not as a traceback
        raise PrepareError(f"recipe {recipe.name} failed reading subset {split}: {type(error).__name__}: {error}") from error
    values, counts = numpy.unique(numpy.frombuffer(hashes, dtype=numpy.int64), return_counts=True)
    repeated = set(values[counts > 1].tolist())  # hashes of keys that may repeat: only these are tracked
    return list(paths), {key for key in staged_keys(lines_file) if hash(key) in repeated} if repeated else set()


def staged_keys(lines_file: Path) -> Iterator[str]:
    with lines_file.open(encoding="utf-8") as lines:
        for text in lines:
            yield str(json.loads(text)["key"])


def left_out_json(entry: LeftOut) -> str:
    return json.dumps({"item": entry.item, "reason": entry.reason, **({"detail": entry.detail} if entry.detail else {})},
                      ensure_ascii=False)


def finished_lines(lines_file: Path, audio: Mapping[str, AudioCheck], converted: Mapping[str, str],
                   tasks: Sequence[Task], repeated: set[str], left: TextIO) -> Iterator[tuple[dict[str, Any], Task, str]]:
    """Each usable staged line with its `duration` (and its extracted WAV where its file was a container), its
    task and its label suffix; the rest are written to `left`."""
    seen: set[str] = set()  # of the keys in `repeated` only
    with lines_file.open(encoding="utf-8") as lines:
        for text in lines:
            line = json.loads(text)
            key = str(line["key"])
            if key in repeated:
                if key in seen:
                    left.write(left_out_json(LeftOut(key, "duplicate key")) + "\n")
                    continue
                seen.add(key)
            check = audio[line["wav"]]
            if check.problem:
                left.write(left_out_json(LeftOut(key, "unreadable audio", check.problem)) + "\n")
                continue
            if line["wav"] in converted:
                line["extra"] = {**(line.get("extra") or {}), "source_file": line["wav"]}
                line["wav"] = converted[line["wav"]]
            duration = check.seconds
            try:
                span = record_span(line, line["wav"], key)  # the rule training, osum test and osum data check apply
            except BadItem as error:
                left.write(left_out_json(LeftOut(key, "unreadable segment", str(error))) + "\n")
                continue
            if span is not None:
                if span[1] > check.seconds + SPAN_SLACK_SECONDS:
                    detail = f"{span[0]}-{span[1]} s of {check.seconds:.2f} s ({line['wav']})"
                    left.write(left_out_json(LeftOut(key, "segment outside its audio", detail)) + "\n")
                    continue
                duration = span[1] - span[0]
            task = assign_task(line, tasks)
            if task is None:
                raise PrepareError(f"key {key}: task tag {line['task']!r} is read by none of the recipe's tasks "
                                   f"({', '.join(t.name for t in tasks)})")
            try:
                target = task_target(line, task)
            except BadItem as error:
                left.write(left_out_json(LeftOut(key, "refused by its task", str(error))) + "\n")
                continue
            yield {**line, "duration": round(duration, 4)}, task, target.suffix


def prepare_split(recipe: CorpusRecipe, source: Path, out: Path, split: str, tasks: Sequence[Task], workers: int,
                  shard: bool, per_shard: int, progress: Callable[[int, int], None] | None,
                  checks: AudioChecks) -> dict[str, Any]:
    """One subset: read, check the audio, write the output atomically; returns the subset's report."""
    staging = out / PARTS_DIR
    lines_file, left_file = staging / f"{split}.lines.jsonl", staging / f"{split}.left_out.jsonl"
    paths, repeated = staged_split(recipe, source, split, lines_file, left_file)
    jobs = [(path, converted_path(out, split, source, path)) for path in paths]
    if progress:
        progress(0, len(jobs))
    audio = checks.checked(jobs, workers, (lambda n: progress(n, len(jobs))) if progress else None)
    converted = {path: target for path, target in jobs if target is not None}
    items: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    mapping: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))

    def counted(left: TextIO) -> Iterator[dict[str, Any]]:
        for line, task, suffix in finished_lines(lines_file, audio, converted, tasks, repeated, left):
            items[task.name] += 1
            seconds[task.name] += line["duration"]
            if suffix:
                labels[task.name][suffix] += 1
            raw = (line.get("extra") or {}).get("raw_label")
            if raw is not None:
                mapping[task.name][str(raw)][suffix] += 1
            yield line

    with left_file.open("a", encoding="utf-8") as left:
        if shard:
            manifest = staging / f"{split}.jsonl"
            write_manifest(manifest, counted(left))
            output = shard_manifests([manifest], out / split, per_shard).relative_to(out)
            manifest.unlink()
        else:
            output = Path(f"{split}.jsonl")
            write_manifest(out / output, counted(left))
    lines_file.unlink()
    left_out = LEFT_OUT_DIR / f"{split}.jsonl"
    (out / LEFT_OUT_DIR).mkdir(exist_ok=True)
    left_file.replace(out / left_out)
    reasons: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    shown = []
    with (out / left_out).open(encoding="utf-8") as entries:
        for text in entries:
            entry = json.loads(text)
            reasons[entry["reason"]] += 1
            if entry["reason"] == UNMAPPED:
                unmapped[entry.get("detail", "")] += 1
            if len(shown) < LEFT_OUT_SHOWN:
                shown.append(entry)
    return {
        "subset": split,
        "output": str(output),
        "items": sum(items.values()),
        "hours": round(sum(seconds.values()) / 3600, 4),
        "tasks": {name: {"items": items[name], "hours": round(seconds[name] / 3600, 4)} for name in items},
        "labels": {name: dict(sorted(counts.items())) for name, counts in labels.items()},
        "mapping": {name: {raw: dict(to) for raw, to in sorted(raws.items())} for name, raws in mapping.items()},
        "left_out": {
            "items": sum(reasons.values()),
            "by_reason": dict(reasons.most_common()),
            # the release's labels that map to nothing (the recipe's documented choice), with their counts
            "unmapped_labels": dict(sorted(unmapped.items())),
            "file": str(left_out),  # every item left out, one JSON line each
            "list": shown,  # the first LEFT_OUT_SHOWN of them
        },
    }


def write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(path)


def prepare_corpus(recipe: CorpusRecipe, source: str | Path, out: str | Path, installed: Mapping[str, Task],
                   splits: Sequence[str] | None = None, workers: int = 1, shard: bool = False,
                   per_shard: int = 1000, log: Callable[[str], None] = print,
                   progress: Callable[[str], Callable[[int, int], None]] | None = None) -> dict[str, Any]:
    """Prepare `splits` (default: every subset present) of the corpus at `source` into `out`; returns the
    report it also writes as ``out/prepare_report.json``. `progress(subset)` gives a callback
    ``(files_done, files_total)`` for that subset's audio."""
    source, out = Path(source).absolute(), Path(out)
    tasks = recipe_tasks(recipe, installed)
    chosen = selected_splits(recipe, source, splits)
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    checks = AudioChecks(out / PARTS_DIR / AUDIO_CHECKS)
    settings = {"recipe": recipe.name, "source": str(source), "shard": shard, **({"per_shard": per_shard} if shard else {})}
    parts = {}
    for split in chosen:
        part_file = out / PARTS_DIR / f"{split}.json"
        if part_file.is_file():
            part = json.loads(part_file.read_text(encoding="utf-8"))
            if part.get("settings") == settings and (out / part["output"]).is_file():
                log(f"{split}: finished before, kept ({part['items']} items)")
                parts[split] = part
                continue
            part_file.unlink()  # prepared otherwise (another source, recipe or output form): done again
        part = prepare_split(recipe, source, out, split, tasks, workers, shard, per_shard,
                             progress(split) if progress else None, checks)
        part["settings"] = settings
        write_json(part_file, part)
        parts[split] = part
        log(f"{split}: {part['items']} items, {part['hours']:.2f} h, {part['left_out']['items']} left out")
    report = gathered_report(recipe, source, out, settings)
    write_json(out / REPORT_NAME, report)
    return report


def gathered_report(recipe: CorpusRecipe, source: Path, out: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every finished subset of `out` prepared with `settings`, in the recipe's order."""
    subsets = {}
    for split in recipe.splits:
        part_file = out / PARTS_DIR / f"{split}.json"
        if part_file.is_file():
            part = json.loads(part_file.read_text(encoding="utf-8"))
            if part.get("settings") == settings:
                subsets[split] = {k: v for k, v in part.items() if k not in ("subset", "settings")}
    return {
        "recipe": recipe.name,
        "source": str(source),
        "tasks": list(recipe.tasks),
        "subsets": subsets,
        "items": sum(s["items"] for s in subsets.values()),
        "hours": round(sum(s["hours"] for s in subsets.values()), 4),
        "left_out": sum(s["left_out"]["items"] for s in subsets.values()),
    }


def summary_lines(report: Mapping[str, Any], shown: int = 5) -> Iterable[str]:
    """The report as a reader wants it on a terminal."""
    yield (f"{report['recipe']} from {report['source']}: {report['items']} items, {report['hours']:.2f} h, "
           f"{report['left_out']} left out")
    for split, part in report["subsets"].items():
        tasks = ", ".join(f"{name} {t['items']} ({t['hours']:.2f} h)" for name, t in part["tasks"].items())
        yield f"  {split} -> {part['output']}: {tasks or 'nothing'}"
        for name, counts in part["labels"].items():
            yield f"    {name} labels: " + ", ".join(f"{label} {n}" for label, n in counts.items())
        for name, raws in part["mapping"].items():
            pairs = [f"{raw} -> {'/'.join(to)}" for raw, to in raws.items()]
            yield f"    {name} raw labels: " + ", ".join(pairs)
        left = part["left_out"]
        if left["unmapped_labels"]:
            yield "    raw labels left out: " + ", ".join(f"{raw} {n}" for raw, n in left["unmapped_labels"].items())
        if left["items"]:
            yield "    left out: " + ", ".join(f"{reason} {n}" for reason, n in left["by_reason"].items())
            for entry in left["list"][:shown]:
                yield f"      {entry['item']}: {entry['reason']}" + (f" ({entry['detail']})" if "detail" in entry else "")
            if left["items"] > shown:
                yield f"      … {left['items'] - shown} more in prepare_report.json"
