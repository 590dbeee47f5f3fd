"""From manifest lines and shard entries to model-ready examples: task assignment, targets and token ids,
prompts, features.

A *record* is one utterance's label fields as a manifest line holds them (``key``, ``wav``, ``txt``,
``task``, ``duration``, ...), plus ``_source`` (``file:line`` or ``shard: key``) and, for an utterance
inside a tar shard, ``_member`` (byte offset and size of its audio in the tar named by ``wav``) and
``_frames``."""

from __future__ import annotations

import io
import json
import math
import os
import random
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import soundfile
import torch
from torch.utils.data import Dataset

from osum_core.data.audio import AudioError, Span, load_audio
from osum_core.data.bad_items import BadItem
from osum_core.data.features import HOP_LENGTH, SAMPLE_RATE, LogMel, SpecAugment
from osum_core.data.shards import duration_frames, read_wav_member
from osum_core.task import Target, Task
from osum_core.task.contract import TARGET_ERRORS, tag_hint


class ExampleError(BadItem):
    """A manifest line whose content a task cannot use; the message starts with ``file:line``."""

    reason = "bad_target"


@dataclass(frozen=True)
class PreparedExample:
    """One example after its task formed the target: everything but the audio features."""

    key: str
    wav: str
    task: str  # the name its prompts have in the dataset's `TaskPrompts` (the task's; `osum predict`'s own prompt's)
    target: Target | None  # None: an utterance to answer (`prediction_example`), not to learn from
    transcript_ids: tuple[int, ...]  # the words alone (the CTC head's target)
    body_ids: tuple[int, ...]  # what the LLM writes before the suffix (the transcript, or e.g. timestamped words)
    suffix_ids: tuple[int, ...]
    frames: int
    source: str
    member: tuple[int, int] | None = None  # (offset, size) of the audio inside the tar `wav`, for shards
    span: Span | None = None  # (start, end) seconds of `wav`: a segment of a longer recording

    def target_ids(self, end_of_text: int) -> tuple[int, ...]:
        """What the LLM learns to write: the body, the suffix, then end-of-text."""
        return self.body_ids + self.suffix_ids + (end_of_text,)

    @property
    def target_length(self) -> int:
        """The length of `target_ids`, counted without building them (planning counts every example's)."""
        return len(self.body_ids) + len(self.suffix_ids) + 1

    @property
    def audio(self) -> str:
        """Where its audio is, in messages and reports: the file, or the shard and key."""
        return self.wav if self.member is None else f"{self.wav}: key {self.key}"


@dataclass(frozen=True)
class PlanItem:
    """What a batch sampler hands the dataset: an example, the epoch, and its draw number in the epoch
    (which seeds its prompt choice and SpecAugment, so a resumed or re-split run draws the same)."""

    example: PreparedExample
    epoch: int
    draw: str
    # Target tokens and examples of the whole optimiser step this item's batch belongs to (this rank's
    # micro-batches), the loss's normaliser; 0 outside training.
    step_tokens: int = 0
    step_items: int = 0


def assign_tasks(examples: Sequence[Mapping[str, Any]], tasks: Sequence[Task]) -> tuple[list[tuple[Mapping, Task]], int]:
    """Pair each example with the first task that selects it; also return how many no task selected."""
    pairs = [(example, task) for example in examples if (task := assign_task(example, tasks)) is not None]
    return pairs, len(examples) - len(pairs)


def missing_audio(path: str, source: str, key: str | None) -> AudioError:
    return AudioError(f"{source}: audio file {path} is missing (a relative `wav` is taken from the manifest's folder)",
                      "audio_missing", key=key)


def audio_frames(path: str, source: str, key: str | None = None) -> int:
    """Feature frames the utterance will have, read from the file header (no decoding)."""
    try:
        info = soundfile.info(path)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        if not os.path.isfile(path):
            raise missing_audio(path, source, key) from None
        empty = os.path.getsize(path) == 0
        raise AudioError(f"{source}: audio file {path} is {'empty (0 bytes)' if empty else f'unreadable ({error})'}",
                         "audio_empty" if empty else "audio_unreadable", key=key) from None
    return int(info.frames * SAMPLE_RATE / info.samplerate) // HOP_LENGTH


def record_span(record: Mapping[str, Any], source: str, key: str) -> Span | None:
    """A manifest line's segment of its recording, ``start`` and ``end`` in seconds (a missing ``start`` is 0;
    ``end`` is needed); None for a line without either."""
    if "start" not in record and "end" not in record:
        return None
    start, end = record.get("start", 0), record.get("end")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end))
    if not numbers or not 0 <= start < end:  # type: ignore[operator]
        raise ExampleError(f"{source}: key {key}: fields 'start' and 'end' must be seconds with 0 <= start < end, "
                           f"got start={json.dumps(start)[:20]}, end={json.dumps(end)[:20]}", "wrong_type", key=key)
    return float(start), float(end)  # type: ignore[arg-type]


def record_frames(record: Mapping[str, Any], source: str, key: str) -> int:
    """The utterance's length in feature frames: from its shard's index, from its manifest line's
    ``duration`` (seconds, trusted as a shard's is: the file is only checked to exist), from its segment's
    ``start`` and ``end``, or from its audio file's header."""
    if record.get("_frames") is not None:
        return int(record["_frames"])
    path = str(record["wav"])
    span = record_span(record, source, key)
    if "duration" not in record and span is not None:
        if not os.path.isfile(path):
            raise missing_audio(path, source, key)
        return round((span[1] - span[0]) * SAMPLE_RATE) // HOP_LENGTH
    if "duration" not in record:
        return audio_frames(path, source, key)
    frames = duration_frames(record["duration"])
    if frames is None:
        raise ExampleError(f"{source}: key {key}: field 'duration' must be a positive number of seconds, got "
                           f"{json.dumps(record['duration'])[:40]}", "wrong_type", key=key)
    if not os.path.isfile(path):
        raise missing_audio(path, source, key)
    return frames


def check_new_key(record: Mapping[str, Any], seen: set[str]) -> None:
    """Add the record's key to `seen`; a key seen before (in the same split or check) is a `duplicate_key`."""
    key = str(record["key"])
    if key in seen:
        raise ExampleError(f"{example_source(record)}: key {key} appears before in this data", "duplicate_key", key=key)
    seen.add(key)


def example_source(example: Mapping[str, Any]) -> str:
    """Where a manifest line came from (``file:line``), for error messages."""
    return str(example.get("_source", example.get("key", "?")))


def task_target(example: Mapping[str, Any], task: Task) -> Target:
    """`task`'s target for a manifest line; a line the task cannot use is an `ExampleError` naming it."""
    try:
        return task.target(example)
    except TARGET_ERRORS as error:
        raise ExampleError(f"{example_source(example)}: task {task.name}: {error}",
                           key=str(example.get("key"))) from None


def assign_task(record: Mapping[str, Any], tasks: Sequence[Task]) -> Task | None:
    """The first of `tasks` that selects `record`, or None."""
    return next((t for t in tasks if t.selects(record)), None)


def checked_frames(record: Mapping[str, Any], source: str, key: str, max_frames: int | None,
                   too_long: str) -> int:
    """The record's length in frames (`record_frames`), held to `max_frames` (the model's longest input): a
    longer utterance is an error with ``too_long: skip``, and is cut to it with ``crop``."""
    frames = record_frames(record, source, key)
    if max_frames is not None and frames > max_frames:
        if too_long != "crop":
            raise ExampleError(f"{source}: key {key}: the audio is {frames / 100:.1f} s, longer than the model's "
                               f"{max_frames / 100:.1f} s (data.too_long=crop cuts it instead)", "too_long", key=key)
        frames = max_frames
    return frames


def prepare_example(record: Mapping[str, Any], task: Task, tokenizer: Any, max_frames: int | None = None,
                    too_long: str = "skip") -> PreparedExample:
    """`task`'s target and its token ids for one record, and its length in frames (`checked_frames`)."""
    source = example_source(record)
    key = str(record["key"])
    target = task_target(record, task)
    if not (target.body or target.transcript if target.transcribed else "").strip() and not target.suffix.strip():
        raise ExampleError(f"{source}: key {key}: the transcript is empty and task {task.name} adds no label: "
                           "nothing to learn", "empty_transcript", key=key)
    frames = checked_frames(record, source, key, max_frames, too_long)
    member = record.get("_member")
    return PreparedExample(
        key=key,
        wav=str(record["wav"]),
        task=task.name,
        target=target,
        transcript_ids=tuple(tokenizer.encode(target.transcript, add_special_tokens=False)),
        body_ids=(tuple(tokenizer.encode(target.body or target.transcript, add_special_tokens=False))
                  if target.transcribed else ()),
        suffix_ids=tuple(tokenizer.encode(target.suffix, add_special_tokens=False)) if target.suffix else (),
        frames=frames,
        source=source,
        member=tuple(member) if member is not None else None,  # type: ignore[arg-type]
        span=record_span(record, source, key) if member is None else None,
    )


def prediction_example(record: Mapping[str, Any], prompt: str, max_frames: int | None = None,
                       too_long: str = "skip") -> PreparedExample:
    """An utterance to answer rather than learn from (``osum predict``): its length, checked as
    `prepare_example` checks it, and no target. `prompt` is the name of its prompt in the dataset's
    `TaskPrompts`."""
    source = example_source(record)
    key = str(record["key"])
    member = record.get("_member")
    return PreparedExample(
        key=key, wav=str(record["wav"]), task=prompt, target=None, transcript_ids=(), body_ids=(), suffix_ids=(),
        frames=checked_frames(record, source, key, max_frames, too_long), source=source,
        member=tuple(member) if member is not None else None,  # type: ignore[arg-type]
        span=record_span(record, source, key) if member is None else None,
    )


class TaskPrompts:
    """Prompt banks as text and as token ids (the tokenizer's, without special tokens), by name (a task's,
    or ``osum predict``'s own prompt's): training draws one at random, evaluation uses the first, and the
    token budget counts the longest. Prompts are tokenised here and nowhere else."""

    def __init__(self, banks: Mapping[str, Sequence[str]], tokenizer: Any) -> None:
        self.texts = {name: tuple(bank) for name, bank in banks.items()}
        self.ids = {name: tuple(tuple(tokenizer.encode(text, add_special_tokens=False)) for text in bank)
                    for name, bank in self.texts.items()}

    @classmethod
    def of_tasks(cls, tasks: Mapping[str, Task], tokenizer: Any, language: str) -> TaskPrompts:
        """Each task's bank in `language` (``data.prompt_language``)."""
        return cls({name: task.prompt_bank(language) for name, task in tasks.items()}, tokenizer)

    def evaluation_text(self, name: str) -> str:
        return self.texts[name][0]

    def longest(self, name: str) -> int:
        return max(len(ids) for ids in self.ids[name])

    def pick(self, name: str, rng: random.Random | None) -> tuple[int, ...]:
        """A prompt drawn with `rng` (training), or without one the first (evaluation)."""
        bank = self.ids[name]
        return bank[rng.randrange(len(bank))] if rng is not None else bank[0]


@dataclass(frozen=True)
class ExampleLength:
    """The LLM sequence length of an example with its longest prompt (the token budget's unit), as the
    model lays it out: `sequence_length(frames, prompt_tokens, target_tokens, frames_per_step)`
    (`SpeechLLM.sequence_length`), with ``data.frames_per_token``."""

    prompts: TaskPrompts
    sequence_length: Callable[..., int]
    frames_per_token: int | None = None

    def __call__(self, example: PreparedExample) -> int:
        return self.sequence_length(example.frames, self.prompts.longest(example.task), example.target_length,
                                    self.frames_per_token)


# About 360 bytes a text of 76 characters and 15 ids, the text included (tracemalloc): 370 MB when full.
CACHED_TEXTS = 1 << 20


class TokenCache:
    """A tokenizer's ids (without special tokens) for the last `size` texts it encoded. Planning prepares
    every shard record again on each pass over an epoch (task counts, layout, iteration), and texts repeat
    within a record too (an ASR body is its transcript) and across records (labels); each is tokenised
    once while it stays here. Ids are kept as int32 arrays: 4 bytes an id, against 36 in a tuple of ints."""

    def __init__(self, tokenizer: Any, size: int) -> None:
        self.tokenizer, self.size = tokenizer, size
        self.texts: OrderedDict[str, array] = OrderedDict()

    def encode(self, text: str, add_special_tokens: bool = False) -> tuple[int, ...]:
        if add_special_tokens:
            return tuple(self.tokenizer.encode(text, add_special_tokens=True))
        ids = self.texts.get(text)
        if ids is not None:
            self.texts.move_to_end(text)
            return tuple(ids)
        ids = array("i", self.tokenizer.encode(text, add_special_tokens=False))
        if self.size > 0:
            self.texts[text] = ids
            if len(self.texts) > self.size:
                self.texts.popitem(last=False)
        return tuple(ids)


@dataclass(frozen=True)
class ExamplePreparer:
    """How records become examples for one run: the selected tasks, every installed task (a tag none of
    them has is an error, a tag of an unselected task is not), the tokenizer, the model's longest input
    and what to do with a longer one (``data.too_long``), and how many texts' token ids to remember
    (`TokenCache`; 0 remembers none)."""

    tasks: Sequence[Task]
    tokenizer: Any
    known_tasks: Sequence[Task] = ()
    max_frames: int | None = None
    too_long: str = "skip"
    cached_texts: int = CACHED_TEXTS
    tokens: TokenCache = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", TokenCache(self.tokenizer, self.cached_texts))

    def select(self, record: Mapping[str, Any]) -> Task | None:
        task = assign_task(record, self.tasks)
        if task is None and self.known_tasks and assign_task(record, self.known_tasks) is None:
            given = str(record.get("task"))
            tags = ", ".join(sorted({t.tag for t in self.known_tasks}))
            hint = tag_hint(given, self.known_tasks) or f"installed tasks' tags: {tags}"
            raise ExampleError(f"{example_source(record)}: key {record.get('key')}: unknown task tag {given!r}; {hint}",
                               "unknown_task", key=str(record.get("key")))
        return task

    def prepare(self, record: Mapping[str, Any], task: Task | None = None) -> PreparedExample | None:
        """The record's example (for `task` when the caller has selected it already), or None when no
        selected task takes it; a bad record raises `BadItem`."""
        task = task or self.select(record)
        if task is None:
            return None
        return prepare_example(record, task, self.tokens, self.max_frames, self.too_long)


def prepare_examples(
    examples: Sequence[Mapping[str, Any]], tasks: Sequence[Task], tokenizer: Any
) -> tuple[list[PreparedExample], int]:
    """Targets, token ids and lengths of every example that one of `tasks` selects (all checked up front,
    so a bad line fails before training rather than hours into it). Returns the examples and the number
    of lines no task selected."""
    pairs, unselected = assign_tasks(examples, tasks)
    return [prepare_example(example, task, tokenizer) for example, task in pairs], unselected


def load_example_audio(example: PreparedExample) -> torch.Tensor:
    """The example's waveform: from its file (its segment, for a line with ``start``/``end``), or from its
    byte range inside a tar shard."""
    if example.member is None:
        return load_audio(example.wav, span=example.span)
    offset, size = example.member
    return load_audio(io.BytesIO(read_wav_member(example.wav, offset, size)), name=example.audio)


@dataclass(frozen=True)
class LossWeights:
    """What a dataloader worker needs of a task: its weights (`Task` holds functions a plugin may define
    inside another, which do not pickle, and workers receive the dataset pickled)."""

    loss: float
    label: float
    ctc: float

    @classmethod
    def of(cls, task: Task) -> LossWeights:
        return cls(task.loss_weight, task.label_loss_weight, task.ctc_loss_weight)


class SpeechDataset(Dataset):
    """Turns the items of an epoch's plan (`PlanItem`) into tensors: loads audio, computes features, picks
    a prompt, and for an example with a target its ids and weights.

    Training draws one prompt per example and epoch at random (seeded by seed, epoch and index, so a run
    is reproducible) and applies SpecAugment; evaluation always uses the first prompt of the bank."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        prompts: TaskPrompts,
        end_of_text: int,
        *,
        n_mels: int,
        train: bool,
        spec_augment: SpecAugment | None,
        seed: int,
        ctc_target: str,
        max_frames: int | None = None,
        on_error: str = "raise",
    ) -> None:
        """`tasks` give the loss weights of targets, `prompts` each example's prompts (by `PreparedExample.task`),
        `end_of_text` the token every target ends with. `max_frames`: features are cut to this many frames
        (``data.too_long: crop``). `on_error`: with ``skip``, an item that fails to load comes back as
        ``{"skipped": BadItem.to_json()}``, which `collate_examples` sets aside, instead of raising inside
        the dataloader worker."""
        self.weights = {name: LossWeights.of(task) for name, task in tasks.items()}
        self.prompts = prompts
        self.max_frames = max_frames
        self.on_error = on_error
        self.eos_id = end_of_text
        self.log_mel = LogMel(n_mels)
        self.train = train
        self.spec_augment = spec_augment if train else None
        self.seed = seed
        if ctc_target not in ("transcript", "target"):
            raise ValueError(f"loss.ctc_target must be transcript or target, got {ctc_target!r}")
        self.ctc_includes_suffix = ctc_target == "target"

    def __getitem__(self, item: PlanItem) -> dict[str, Any]:
        """Features, prompt and target tensors of one item of an epoch's plan (or why it was skipped)."""
        try:
            return self.tensors(item)
        except Exception as error:  # noqa: BLE001 - any failure on one item costs that item only
            if self.on_error == "raise":
                raise
            example = item.example
            if not isinstance(error, BadItem):
                error = BadItem(f"{example.source}: key {example.key}: {type(error).__name__}: {error}",
                                "load_failed", source=example.source)
            error.source, error.key = example.source, example.key
            return {"skipped": error.to_json(), "key": example.key, "step_tokens": item.step_tokens,
                    "step_items": item.step_items}

    def tensors(self, item: PlanItem) -> dict[str, Any]:
        example = item.example
        rng = random.Random(f"{self.seed}:{item.epoch}:{item.draw}")
        wave = load_example_audio(example)
        features = self.log_mel(wave)
        if self.max_frames is not None:
            features = features[: self.max_frames]
        if self.spec_augment is not None:
            generator = torch.Generator().manual_seed(rng.randrange(2**31))
            features = self.spec_augment(features, generator)
        prompt = self.prompts.pick(example.task, rng if self.train else None)
        row = {
            "step_tokens": item.step_tokens,
            "step_items": item.step_items,
            "key": example.key,
            "task": example.task,
            "target": example.target,
            "source": example.source,
            "file": example.audio,
            "seconds": len(wave) / SAMPLE_RATE,
            "features": features,
            "prompt_ids": torch.tensor(prompt, dtype=torch.long),
        }
        if example.target is not None:
            row.update(self.target_tensors(example))
        return row

    def ctc_heard_suffix(self, example: PreparedExample) -> bool:
        """Whether the CTC head learns the suffix too: ``loss.ctc_target: target``, and a suffix the audio holds."""
        return self.ctc_includes_suffix and example.target is not None and example.target.heard_suffix

    def target_tensors(self, example: PreparedExample) -> dict[str, torch.Tensor]:
        task = self.weights[example.task]
        suffix_weight = task.loss * task.label
        weights = [task.loss] * len(example.body_ids) + [suffix_weight] * len(example.suffix_ids)
        weights.append(suffix_weight if example.suffix_ids else task.loss)  # end-of-text follows the label
        return {
            "target_ids": torch.tensor(example.target_ids(self.eos_id), dtype=torch.long),
            "target_weights": torch.tensor(weights, dtype=torch.float32),
            "ctc_ids": torch.tensor(
                example.transcript_ids + (example.suffix_ids if self.ctc_heard_suffix(example) else ()),
                dtype=torch.long,
            ),
            # A label-only line without a transcript (OSUM-EChat's "<happy>") does not say what was spoken: an empty
            # CTC target would teach the head that its speech is all blank.
            "ctc_weight": task.ctc if example.transcript_ids or example.target.transcribed else 0.0,
        }
